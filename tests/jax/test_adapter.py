"""`JaxAdapter`, the conformance suite's view of the JAX twin."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lmref import impl_numpy
from lmref.impl_jax.adapter import JaxAdapter, bfloat16
from lmref.spec.params import init_params
from lmref.spec.presets import tiny
from tests.jax.common import BFLOAT16, FLOAT32, assert_float32_close, nmse

CONFIG = tiny("olmo-alibi")  # ALiBi, non-parametric LayerNorm, qkv clip
PARAMS = init_params(CONFIG, 4)
TOKENS = np.random.default_rng(4).integers(0, CONFIG.vocab_size, size=(2, 7))


def test_identity():
    adapter = JaxAdapter()
    assert (adapter.name, adapter.version, adapter.dtype) == ("jax", jax.__version__, "float32")
    assert bfloat16.dtype == JaxAdapter("bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="float16"):
        JaxAdapter("float16")


def test_float32_capabilities_match_the_golden():
    adapter = JaxAdapter()
    golden: dict = {}
    ref = impl_numpy.forward(CONFIG, PARAMS, TOKENS, capture=golden)
    logits = adapter.forward(CONFIG, PARAMS, TOKENS)
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
    assert_float32_close(logits, ref, "forward")
    assert_float32_close(adapter.decode(CONFIG, PARAMS, TOKENS, 4), ref, "decode")
    captured = adapter.capture(CONFIG, PARAMS, TOKENS)
    assert list(captured) == list(golden)
    for name, value in golden.items():
        assert isinstance(captured[name], np.ndarray)
        assert_float32_close(captured[name], value, f"capture {name}")
    loss = adapter.loss(CONFIG, PARAMS, TOKENS)
    assert isinstance(loss, float)
    assert loss == pytest.approx(impl_numpy.loss(CONFIG, PARAMS, TOKENS), rel=FLOAT32.loss_rtol, abs=FLOAT32.loss_atol)


def test_bfloat16_forward_is_bfloat16_and_near_the_golden():
    logits = bfloat16.forward(CONFIG, PARAMS, TOKENS)
    assert isinstance(logits, np.ndarray) and logits.dtype.name == "bfloat16"
    assert nmse(logits, impl_numpy.forward(CONFIG, PARAMS, TOKENS)) <= BFLOAT16.nmse
