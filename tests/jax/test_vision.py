"""LLaVA's image pathway in the JAX twin (impl_jax/vision.py) against the float64 golden.

Hypothesis draws the configs and the inputs (tests/jax/vision_strategies.py): odd and even patch
grids, towers of 1 to 3 layers read at any feature layer, both feature strategies, every
activation, projectors with and without biases, images at random positions of random rows.
In float32 the logits, every capture (the tower's first), the loss and the decode after an image
prefill meet the conformance suite's float32 row; the fixed tests run the float64 row, the
gradient, bfloat16, the one compilation for any image placement, and the bad inputs, which get
the golden's errors and messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import jax
import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st

from lmref import impl_jax
from lmref import impl_numpy
from lmref.conformance.tolerances import DEFAULT_ROWS
from lmref.spec.captures import capture_names
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params
from lmref.spec.presets import tiny
from tests.conditioning import golden_in_float32
from tests.jax.common import (
    BFLOAT16, FLOAT32, assert_close, assert_close_as_float32_can, assert_float32_close,
    assert_float32_close_as_the_golden_can, fewer_examples, nmse, note_case,
)
from tests.jax.test_bf16 import WEIGHT_ROUNDING_FACTOR, rounded_to_bfloat16
from tests.jax.test_grad import ATOL, RTOL, STEP, unit_direction
from tests.jax.vision_strategies import image_inputs, text_ids, vision_configs
from tests.strategies import seeds

FLOAT64 = DEFAULT_ROWS["float64"]


def note_images(seed: int, tokens: np.ndarray, pixels: np.ndarray) -> None:
    note_case(seed, tokens)
    note(f"pixel_values: shape {pixels.shape}, drawn from the inputs' seed")


@contextlib.contextmanager
def programs_released():
    """Drop the example's compiled programs after it.  Each holds memory maps while jit caches it
    (measured: ~130 for a drawn LLaVA, ~65 for a text model, with XLA's optimisations off), every
    example compiles new ones (the config is static), and at the kernel's vm.max_map_count
    (65530 by default), ~500 programs, XLA aborts the process ("LLVM compilation error: Cannot
    allocate memory"): the thorough profile reached it."""
    try:
        yield
    finally:
        jax.clear_caches()


# --- properties on drawn configs and inputs, float32 --------------------------------------------


@given(config=vision_configs(), seed=seeds, data=st.data())
def test_logits_and_captures_match_the_golden(config, seed, data):
    tokens, pixels = data.draw(image_inputs(config), label="inputs")
    note_images(seed, tokens, pixels)
    params = init_params(config, seed)
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, pixel_values=pixels, capture=golden)
    captured: dict = {}
    with programs_released():
        logits = impl_jax.forward(config, impl_jax.from_canonical(params), tokens, pixel_values=pixels,
                                  capture=captured)
    golden32: dict = {}  # a drawn config can compute worse in float32 than the presets do (tests/conditioning.py)
    ref32 = golden_in_float32(config, params, tokens, pixel_values=pixels, capture=golden32)
    assert_float32_close_as_the_golden_can(logits, ref, ref32, "logits")
    assert list(captured) == capture_names(config, images=True) == list(golden)
    for name, value in golden.items():
        assert_float32_close_as_the_golden_can(captured[name], value, golden32[name], f"capture {name}")


@fewer_examples(2)  # two compilations per example: the prefill with the images and the step
@given(config=vision_configs(), seed=seeds, data=st.data())
def test_decode_after_an_image_prefill_equals_prefill(config, seed, data):
    tokens, pixels = data.draw(image_inputs(config), label="inputs")
    last_image_token = int(np.argwhere(tokens == config.vision.image_token_id)[:, 1].max())
    prompt_len = data.draw(st.integers(last_image_token + 1, tokens.shape[1]), label="prompt_len")
    note_images(seed, tokens, pixels)
    params = init_params(config, seed)
    jax_params = impl_jax.from_canonical(params)
    with programs_released():
        decoded = impl_jax.decode(config, jax_params, tokens, prompt_len, pixel_values=pixels)
        prefill = impl_jax.forward(config, jax_params, tokens, pixel_values=pixels)
    golden = impl_numpy.forward(config, params, tokens, pixel_values=pixels)
    assert_close_as_float32_can(decoded, prefill, golden=golden,
                                golden32=golden_in_float32(config, params, tokens, pixel_values=pixels),
                                nmse_max=1e-12, atol=1e-5, rtol=1e-5, what="decode vs prefill, both JAX float32")
    assert_float32_close(decoded, golden, "decode vs golden")


@fewer_examples(2)
@given(config=vision_configs(), seed=seeds, data=st.data())
def test_loss_skips_the_placeholders_and_matches_the_golden(config, seed, data):
    tokens, pixels = data.draw(image_inputs(config), label="inputs")
    assume((tokens[:, 1:] != config.vision.image_token_id).any())  # a text target to score
    note_images(seed, tokens, pixels)
    params = init_params(config, seed)
    with programs_released():
        value = float(impl_jax.loss(config, impl_jax.from_canonical(params), tokens, pixel_values=pixels))
    assert value == pytest.approx(impl_numpy.loss(config, params, tokens, pixel_values=pixels),
                                  rel=FLOAT32.loss_rtol, abs=FLOAT32.loss_atol)


# --- fixed cases: the tiny LLaVA and variants of its tower ---------------------------------------

LLAVA = tiny("llava-1.5-7b")  # 3 x 3 patches of 4 pixels, 3 layers read at -2, drop_class
VARIANTS = {
    "llava-tiny": LLAVA,
    "full-strategy-layer-0": dataclasses.replace(
        LLAVA, vision=dataclasses.replace(LLAVA.vision, feature_strategy="full", feature_layer=0)),
    "even-grid-one-channel-no-bias": dataclasses.replace(
        LLAVA, vision=dataclasses.replace(LLAVA.vision, image_size=8, n_channels=1, projector_bias=False,
                                          feature_layer=3, activation="gelu_tanh", projector_activation="silu")),
}


def fixed_inputs(config: ModelConfig, seed: int, starts: tuple[tuple[int, int], ...] = ((0, 1), (1, 3)),
                 seq: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """tokens [2, S] with an image run at each (row, start), and their pixels."""
    v, rng = config.vision, np.random.default_rng(seed)
    tokens = text_ids(config, rng, (2, seq or 2 * v.tokens_per_image + 5))
    for row, start in starts:
        tokens[row, start : start + v.tokens_per_image] = v.image_token_id
    return tokens, rng.standard_normal((len(starts), v.n_channels, v.image_size, v.image_size))


def assert_float64_close(out, ref: np.ndarray, what: str) -> None:
    assert_close(out, ref, nmse_max=FLOAT64.nmse, atol=FLOAT64.atol, rtol=FLOAT64.rtol, what=what)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_float64_prefill_captures_and_decode_match_the_golden(name):
    config = VARIANTS[name]
    params = init_params(config, 1)
    tokens, pixels = fixed_inputs(config, 1, starts=((0, 1), (0, config.vision.tokens_per_image + 1), (1, 4)))
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, pixel_values=pixels, capture=golden)
    captured: dict = {}
    with jax.enable_x64(True):
        params64 = impl_jax.from_canonical(params, "float64")
        logits = impl_jax.forward(config, params64, tokens, pixel_values=pixels, capture=captured)
        decoded = impl_jax.decode(config, params64, tokens, tokens.shape[1] - 3, pixel_values=pixels)
    assert logits.dtype == np.float64 and list(captured) == list(golden)
    assert_float64_close(logits, ref, f"{name}: logits")
    for component, value in golden.items():
        assert_float64_close(captured[component], value, f"{name}: capture {component}")
    assert_float64_close(decoded, ref, f"{name}: decode vs golden prefill")


def test_float64_gradient_with_images_matches_finite_differences_of_the_golden():
    config = VARIANTS["full-strategy-layer-0"]  # also the class token's row through the projector
    params = init_params(config, 3)
    tokens, pixels = fixed_inputs(config, 3)
    direction = unit_direction(params, 3)
    with jax.enable_x64(True):
        value, grads = jax.value_and_grad(impl_jax.loss, argnums=1)(
            config, impl_jax.from_canonical(params, "float64"), tokens, pixel_values=pixels)
    assert float(value) == pytest.approx(impl_numpy.loss(config, params, tokens, pixel_values=pixels), rel=1e-12)
    assert float(np.abs(np.asarray(grads["vision.patch_embed"])).max()) > 0  # the images reach the loss
    slope = sum(float(np.vdot(np.asarray(grads[k]), direction[k])) for k in params)

    def golden_loss(sign: float) -> float:
        shifted = {k: v + sign * STEP * direction[k] for k, v in params.items()}
        return impl_numpy.loss(config, shifted, tokens, pixel_values=pixels)

    expected = (golden_loss(1.0) - golden_loss(-1.0)) / (2 * STEP)
    assert abs(slope - expected) <= ATOL + RTOL * abs(expected), f"grad . d = {slope!r}, fd = {expected!r}"


def test_bfloat16_error_is_bounded_by_weight_rounding():
    """The bound of tests/jax/test_bf16.py, the pixels given in bfloat16 too."""
    params = init_params(LLAVA, 4)
    tokens, pixels = fixed_inputs(LLAVA, 4)
    logits = impl_jax.forward(LLAVA, impl_jax.from_canonical(params, "bfloat16"), tokens,
                              pixel_values=jax.numpy.asarray(pixels, jax.numpy.bfloat16))
    assert logits.dtype == "bfloat16"
    ref = impl_numpy.forward(LLAVA, params, tokens, pixel_values=pixels)
    rounded = impl_numpy.forward(LLAVA, rounded_to_bfloat16(params), tokens, pixel_values=pixels)
    assert nmse(logits, ref) <= max(BFLOAT16.nmse, WEIGHT_ROUNDING_FACTOR * nmse(rounded, ref))


def test_any_image_placement_shares_one_compilation(caplog):
    """The merge is traced with fixed shapes: images moved to other positions and rows (the same
    token and image shapes) reuse the program, and each result is the golden's."""
    config = dataclasses.replace(LLAVA, name="vision-compilation-count")  # a fresh jit key
    params = init_params(config, 5)
    jax_params = impl_jax.from_canonical(params)
    t = config.vision.tokens_per_image
    placements = [((0, 0), (1, 5)), ((0, 2), (0, t + 2)), ((1, 0), (1, t))]  # touching runs in the last
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
        for starts in placements:
            tokens, pixels = fixed_inputs(config, 5, starts)
            logits = impl_jax.forward(config, jax_params, tokens, pixel_values=pixels)
            assert_float32_close(logits, impl_numpy.forward(config, params, tokens, pixel_values=pixels), f"{starts}")
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(forward_core)")]
    assert len(compiles) == 1, [r.getMessage() for r in compiles]


def test_no_images_and_no_placeholders_is_the_text_model():
    """Zero images [0, C, H, W] fill zero placeholders: the logits are the text-only ones."""
    params = init_params(LLAVA, 6)
    tokens, _ = fixed_inputs(LLAVA, 6, starts=())
    v = LLAVA.vision
    none = np.zeros((0, v.n_channels, v.image_size, v.image_size))
    jax_params = impl_jax.from_canonical(params)
    text_only = impl_jax.forward(LLAVA, jax_params, tokens)
    assert_close(impl_jax.forward(LLAVA, jax_params, tokens, pixel_values=none), text_only, nmse_max=0, atol=0,
                 rtol=0, what="zero images vs none")
    assert_float32_close(text_only, impl_numpy.forward(LLAVA, params, tokens, pixel_values=none), "vs golden")


# --- bad input: the golden's errors, with the golden's messages -----------------------------------

TOKENS, PIXELS = fixed_inputs(LLAVA, 7)  # two images, one in each row
PARAMS = init_params(LLAVA, 7)
NAN_PIXELS = PIXELS.copy()
NAN_PIXELS[1, 2, 3, 4] = np.nan
BAD_IMAGES = {  # label -> (config, pixel_values) for TOKENS
    "no-tower": (tiny("llama3"), PIXELS),
    "wrong-size": (LLAVA, PIXELS[:, :, :-1, :-1]),
    "wrong-channels": (LLAVA, PIXELS[:, :2]),
    "3-D": (LLAVA, PIXELS[0]),
    "integer": (LLAVA, PIXELS.astype(np.int64)),
    "non-finite": (LLAVA, NAN_PIXELS),
    "too-few-images": (LLAVA, PIXELS[:1]),
    "too-many-images": (LLAVA, np.concatenate([PIXELS, PIXELS[:1]])),
    "placeholders-without-images": (LLAVA, None),
}
ENTRIES = {  # entry -> (golden, twin), each called as (config, params, tokens, pixel_values)
    "forward": (lambda c, p, t, x: impl_numpy.forward(c, p, t, pixel_values=x),
                lambda c, p, t, x: impl_jax.forward(c, p, t, pixel_values=x)),
    "decode": (lambda c, p, t, x: impl_numpy.decode(c, p, t, t.shape[1], pixel_values=x),
               lambda c, p, t, x: impl_jax.decode(c, p, t, t.shape[1], pixel_values=x)),
    "loss": (lambda c, p, t, x: impl_numpy.loss(c, p, t, pixel_values=x),
             lambda c, p, t, x: impl_jax.loss(c, p, t, pixel_values=x)),
}


def assert_same_error(golden, twin, *args) -> None:
    with pytest.raises(ValueError) as expected:  # InputError is a ValueError
        golden(*args)
    with pytest.raises(type(expected.value)) as got:
        twin(*args)
    assert type(got.value) is type(expected.value) and str(got.value) == str(expected.value)


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("label", list(BAD_IMAGES))
def test_bad_images_get_the_golden_error(entry, label):
    config, pixels = BAD_IMAGES[label]
    assert_same_error(*ENTRIES[entry], config, PARAMS, TOKENS, pixels)


def test_decode_refuses_image_tokens_after_the_prompt():
    """Each step feeds one token's embedding: every placeholder must be in the prefill."""
    prompt_len = int(np.argwhere(TOKENS == LLAVA.vision.image_token_id)[:, 1].max())  # the last one outside
    assert_same_error(lambda *a: impl_numpy.decode(*a[:3], prompt_len, pixel_values=a[3]),
                      lambda *a: impl_jax.decode(*a[:3], prompt_len, pixel_values=a[3]), LLAVA, PARAMS, TOKENS, PIXELS)


def test_loss_refuses_a_batch_without_a_text_target():
    tokens, pixels = fixed_inputs(LLAVA, 8, starts=((0, 1), (1, 1)), seq=LLAVA.vision.tokens_per_image + 1)
    assert_same_error(*ENTRIES["loss"], LLAVA, PARAMS, tokens, pixels)
