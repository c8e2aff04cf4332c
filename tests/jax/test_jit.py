"""The jitted entry points as shipped, with XLA's defaults (the other tests compile with most
optimisations off and a cheaper CPU codegen, tests/xla_compiles.py), against the golden and
op-by-op execution (`jax.disable_jit()`)."""

from __future__ import annotations

import jax
import numpy as np

from lmref import impl_jax
from lmref import impl_numpy
from lmref.spec.params import init_params
from lmref.spec.presets import tiny
from tests.jax.common import assert_close, assert_float32_close
from tests.xla_compiles import default_xla_optimizations


def run_all(config, params, tokens) -> dict:
    captured: dict = {}
    return {"forward": impl_jax.forward(config, params, tokens, capture=captured),
            "decode": impl_jax.decode(config, params, tokens, 3),
            **{f"capture {name}": value for name, value in captured.items()}}


def test_shipped_jit_matches_the_golden_and_op_by_op():
    config = tiny("llama3", name="jit-default-optimizations")  # RoPE, llama3 scaling, GQA, gated MLP
    params = init_params(config, 5)
    tokens = np.random.default_rng(5).integers(0, config.vocab_size, size=(2, 6))
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, capture=golden)
    jax_params = impl_jax.from_canonical(params)
    captured: dict = {}
    with default_xla_optimizations():
        shipped = impl_jax.forward(config, jax_params, tokens, capture=captured)
        assert_float32_close(impl_jax.decode(config, jax_params, tokens, 3), ref, "decode")
    assert_float32_close(shipped, ref, "forward")
    for name, value in golden.items():
        assert_float32_close(captured[name], value, f"capture {name}")
    with jax.disable_jit():  # op by op: each primitive compiles for each shape, so the forward only
        op_by_op = impl_jax.forward(config, jax_params, tokens)
    assert_close(op_by_op, shipped, nmse_max=1e-12, atol=1e-5, rtol=1e-5, what="forward: op by op vs jit")
