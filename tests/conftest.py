"""Hypothesis profiles for the property tests (select with --hypothesis-profile NAME), cheap
XLA compiles for every test of the JAX twin, and the fixture for the tests of Ctrl-C.

dev: quick local runs.  ci: derandomized, what `make test` runs.  thorough: many examples,
for `make test-thorough` or before a release.  deadline=None everywhere: JIT compilation and
first-call overheads of the twins make per-example timing meaningless.
"""

import signal

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)

settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile("dev")


@pytest.fixture(autouse=True, scope="package")  # the tests package: not conformance/, run in the same session
def _fast_xla_compiles():
    """XLA's optimisations off for the JAX twin's tests (tests/jax, and the twins' controls,
    routing margin and gradients here).

    Every hypothesis example draws a new config, a static jit argument, so every example
    compiles; XLA's CPU backend spends most of that time optimising (~0.8 s per tiny model on
    2 cores, ~0.3 s with `jax_disable_most_optimizations`).  Running op by op instead
    (`jax.disable_jit()`) is slower still: each primitive compiles for each new shape (~4 s
    per first forward).  The numbers barely move: on the stored cases of seven archs the
    bfloat16 logits and losses are bit for bit the optimised ones, the float32 ones within 4e-6
    (fusions sum in another order), far inside the float32 row.  tests/jax/test_jit.py runs
    the entry points as shipped, optimised, against the golden and op by op; `pytest
    conformance/ --impl jax` runs them optimised."""
    import jax

    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture
def sigint_as_from_a_terminal():
    """Ctrl-C reaches this test and the commands it starts, as in a terminal, however the suite
    was started.  A shell without job control starts a background job (`make test &`, `nohup`)
    with SIGINT ignored, which every process below inherits: Python then installs no
    KeyboardInterrupt handler and lmref rightly carries on.  Here SIGINT raises KeyboardInterrupt
    in this process, and a child, whose handler resets to the default at exec, gets Python's."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
