"""`JaxAdapter`, the conformance suite's view of the JAX twin."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lmref import impl_jax, impl_numpy
from lmref.conformance.adapters import CAPABILITIES, takes_images
from lmref.conformance.image_cases import case_pixels, place_images, text_ids
from lmref.impl_jax.adapter import JaxAdapter, bfloat16
from lmref.spec.captures import capture_names
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


LLAVA = tiny("llava-1.5-7b")  # a CLIP tower of 3 x 3 patches, the projector, image placeholders
LLAVA_PARAMS = init_params(LLAVA, 5)
LLAVA_TOKENS = place_images(LLAVA, text_ids(LLAVA, np.random.default_rng(5).random((2, 16))), ((0, 1), (1, 5)))
PIXELS = case_pixels("llava-1.5-7b", "test-adapter", 5, LLAVA, 2)  # [2, C, H, W], as the golden cases draw them


def test_every_capability_takes_images_and_matches_the_golden():
    adapter = JaxAdapter()
    assert all(takes_images(getattr(adapter, capability)) for capability in CAPABILITIES)
    golden: dict = {}
    ref = impl_numpy.forward(LLAVA, LLAVA_PARAMS, LLAVA_TOKENS, pixel_values=PIXELS, capture=golden)
    assert_float32_close(adapter.forward(LLAVA, LLAVA_PARAMS, LLAVA_TOKENS, pixel_values=PIXELS), ref, "forward")
    assert_float32_close(adapter.decode(LLAVA, LLAVA_PARAMS, LLAVA_TOKENS, 14, pixel_values=PIXELS), ref, "decode")
    captured = adapter.capture(LLAVA, LLAVA_PARAMS, LLAVA_TOKENS, pixel_values=PIXELS)
    assert list(captured) == list(golden) == capture_names(LLAVA, images=True)
    for name, value in golden.items():
        assert_float32_close(captured[name], value, f"capture {name}")
    loss = adapter.loss(LLAVA, LLAVA_PARAMS, LLAVA_TOKENS, pixel_values=PIXELS)
    assert loss == pytest.approx(impl_numpy.loss(LLAVA, LLAVA_PARAMS, LLAVA_TOKENS, pixel_values=PIXELS),
                                 rel=FLOAT32.loss_rtol, abs=FLOAT32.loss_atol)
    assert bfloat16.forward(LLAVA, LLAVA_PARAMS, LLAVA_TOKENS, pixel_values=PIXELS).dtype.name == "bfloat16"


def test_forward_capture_and_loss_of_a_case_share_one_compilation():
    """One compiled `evaluate` serves forward, capture and loss of a shape (XLA compilation is
    nearly all of a conformance case's time); a new shape compiles once more."""
    config = tiny("llama3", name="adapter-shares-one-compilation")  # new to the jit cache
    params = init_params(config, 6)
    tokens = np.random.default_rng(6).integers(0, config.vocab_size, size=(2, 5))
    adapter, before, losses = JaxAdapter(), impl_jax.evaluate_jit._cache_size(), impl_jax.loss_jit._cache_size()
    logits = adapter.forward(config, params, tokens)
    captured = adapter.capture(config, params, tokens)
    loss = adapter.loss(config, params, tokens)
    assert impl_jax.evaluate_jit._cache_size() == before + 1
    assert impl_jax.loss_jit._cache_size() == losses  # the loss came from the same compilation
    np.testing.assert_array_equal(captured["logits"], logits)  # the same executable's outputs
    assert loss == pytest.approx(float(impl_jax.loss(config, impl_jax.from_canonical(params), tokens)), rel=1e-6)
    adapter.forward(config, params, tokens[:, :3])
    assert impl_jax.evaluate_jit._cache_size() == before + 2


def test_the_loss_through_evaluate_keeps_the_loss_errors():
    one_token = TOKENS[:, :1]
    with pytest.raises(ValueError, match="at least 2 tokens"):
        JaxAdapter().loss(CONFIG, PARAMS, one_token)
    assert JaxAdapter().forward(CONFIG, PARAMS, one_token).shape == (2, 1, CONFIG.vocab_size)
