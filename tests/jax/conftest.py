"""Cheap compiles for the JAX twin's tests.

Every hypothesis example draws a new config, a static jit argument, so every example
compiles; XLA's CPU backend spends most of that time optimising (~0.8 s per tiny model on
2 cores, ~0.3 s with `jax_disable_most_optimizations`).  Running op by op instead
(`jax.disable_jit()`) is slower still: each primitive compiles for each new shape (~4 s
per first forward).  So the tests run jitted, with XLA's optimisations off, and
tests/jax/test_jit.py runs the entry points as shipped, optimised, against the golden and
op by op.
"""

import jax
import pytest


@pytest.fixture(autouse=True, scope="package")
def _fast_xla_compiles():
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
