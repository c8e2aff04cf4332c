"""LLaVA's image pathway in the torch twin (impl_torch/vision.py) against the float64 golden
(impl_numpy/vision.py): hypothesis over `vision_configs()` and `image_batches()` (patch grids
odd and even, tower depths, feature layers from either end, both feature strategies, the
projector's biases, every activation, 0 to 2 images per row anywhere in it), through both
attention kernels: forward logits and captures, decode after an image prefill, the loss (which
skips image placeholders), its gradient; the patch embedding against CLIP's convolution; the
parameter names; and bad images refused with the golden's message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, note
from hypothesis import strategies as st

from lmref import impl_numpy, impl_torch
from lmref.impl_torch.attention import ATTN_IMPLS
from lmref.impl_torch.model import torch_name
from lmref.impl_torch.vision import patchify
from lmref.spec import InputError, init_params, param_shapes, tiny
from lmref.spec.captures import capture_names
from tests.strategies import image_batches, seeds, vision_configs
from tests.torch.helpers import FLOAT32, FLOAT64, assert_close, build, numpy64
from tests.torch.test_grad import EPS


@st.composite
def image_examples(draw) -> tuple:
    """(config, params, tokens [B, S], pixel_values [N, C, H, W]); notes how to rebuild it."""
    config = draw(vision_configs())
    seed = draw(seeds)
    tokens, pixels = draw(image_batches(config))
    note(f"config = {config!r}\nparams = spec.init_params(config, {seed})\ntokens = np.array({tokens.tolist()})")
    return config, init_params(config, seed), tokens, pixels


def as_given(pixels: np.ndarray, attn_impl: str):
    """The images as NumPy for SDPA, as a tensor for eager: both input paths of the checks."""
    return pixels if attn_impl == "sdpa" else torch.from_numpy(pixels)


@given(image_examples())
def test_forward_and_captures_match_the_golden(example):
    config, params, tokens, pixels = example
    ref: dict = {}
    impl_numpy.forward(config, params, tokens, pixel_values=pixels, capture=ref)
    for attn_impl in ATTN_IMPLS:
        got: dict = {}
        build(config, params, torch.float64, attn_impl)(tokens, capture=got, pixel_values=as_given(pixels, attn_impl))
        assert list(got) == list(ref) == capture_names(config, images=True)
        for name, value in ref.items():
            assert_close(numpy64(got[name]), value, FLOAT64, f"{attn_impl} {name}")


@given(image_examples(), st.data())
def test_decode_after_an_image_prefill_equals_prefill(example, data):
    config, params, tokens, pixels = example
    last = int(np.argwhere(tokens == config.vision.image_token_id)[:, 1].max())  # the prompt holds every image
    prompt_len = data.draw(st.integers(last + 1, tokens.shape[1]), label="prompt_len")
    ref = impl_numpy.forward(config, params, tokens, pixel_values=pixels)
    for attn_impl in ATTN_IMPLS:
        model = build(config, params, torch.float64, attn_impl)
        decoded = model.decode(tokens, prompt_len, pixel_values=as_given(pixels, attn_impl))
        assert_close(numpy64(decoded), ref, FLOAT64, f"{attn_impl} decode from {prompt_len}")


def scored(config, tokens: np.ndarray) -> bool:
    """Whether some next token is text: the loss has a target."""
    return tokens.shape[1] >= 2 and bool((tokens[:, 1:] != config.vision.image_token_id).any())


@given(image_examples())
def test_the_loss_matches_the_golden(example):
    config, params, tokens, pixels = example
    assume(scored(config, tokens))
    ref = impl_numpy.loss(config, params, tokens, pixel_values=pixels)
    row = FLOAT64
    for attn_impl in ATTN_IMPLS:
        model = build(config, params, torch.float64, attn_impl)
        got = float(model.loss(tokens, pixel_values=as_given(pixels, attn_impl)).detach())
        assert abs(got - ref) <= row.loss_atol + row.loss_rtol * abs(ref), (attn_impl, got, ref)
    got = float(impl_torch.loss(config, params, tokens, pixel_values=pixels, dtype=torch.float64))
    assert abs(got - ref) <= row.loss_atol + row.loss_rtol * abs(ref), ("functional", got, ref)


@given(image_examples())
def test_the_loss_gradient_matches_golden_finite_differences(example):
    """Along a random unit direction over every parameter (the tower's and the projector's
    included); the layers past the feature layer get no gradient (None: zero)."""
    config, params, tokens, pixels = example
    assume(scored(config, tokens))
    model = build(config, params, torch.float64, "sdpa")
    model.loss(tokens, pixel_values=pixels).backward()
    rng = np.random.default_rng(len(tokens.ravel()))
    u = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    norm = np.sqrt(sum((d**2).sum() for d in u.values()))
    autograd = 0.0
    for name in params:
        target, transposed = torch_name(name)
        g = model.get_parameter(target).grad
        if g is not None:
            autograd += float(((g.T if transposed else g).numpy() * u[name]).sum()) / norm

    def loss_at(sign: float) -> float:
        return impl_numpy.loss(config, {k: v + sign * EPS * u[k] / norm for k, v in params.items()}, tokens,
                               pixel_values=pixels)

    fd = (loss_at(1.0) - loss_at(-1.0)) / (2 * EPS)
    assert abs(autograd - fd) <= 1e-8 + 1e-5 * abs(fd), f"autograd {autograd!r} vs finite differences {fd!r}"


@given(vision_configs(), seeds)
def test_every_module_parameter_is_a_canonical_one_and_round_trips(config, seed):
    model = impl_torch.Transformer(config)
    assert set(dict(model.named_parameters())) == {torch_name(name)[0] for name in param_shapes(config)}
    params = init_params(config, seed)
    back = build(config, params, torch.float64).to_canonical()
    assert list(back) == list(param_shapes(config))
    for name, value in back.items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)


@given(vision_configs(), seeds)
def test_the_patch_embedding_is_clips_convolution(config, seed):
    """patch_embed(patchify(x)) = Conv2d(C, Dv, p, stride p, no bias) with the weight
    patch_embed.weight.view(Dv, C, p, p), patches read row-major (transformers
    `CLIPVisionEmbeddings`: `patch_embeds.flatten(2).transpose(1, 2)`)."""
    v = config.vision
    model = build(config, init_params(config, seed), torch.float64)
    images = torch.from_numpy(np.random.default_rng(seed).standard_normal((2, v.n_channels, v.image_size, v.image_size)))
    weight = model.vision.patch_embed.weight  # [Dv, C*p*p]
    conv = F.conv2d(images, weight.view(v.d_model, v.n_channels, v.patch_size, v.patch_size), stride=v.patch_size)
    torch.testing.assert_close(model.vision.patch_embed(patchify(v, images)), conv.flatten(2).transpose(1, 2),
                               rtol=1e-12, atol=1e-12)  # [N, g*g, Dv] both


# --- bad input: the golden's message, for NumPy and tensor images ------------------------------

CONFIG = tiny("llava-1.5-7b")
PARAMS = init_params(CONFIG, 0)
V = CONFIG.vision
TEXT = (V.image_token_id + 1 + np.arange(12)) % CONFIG.vocab_size  # text ids, none the placeholder
SHAPE = (V.n_channels, V.image_size, V.image_size)


def tokens_with(*runs: int, text: int = 3) -> np.ndarray:
    """One row: `text` text tokens, then each run of that many placeholders followed by a text token."""
    row = list(TEXT[:text])
    for n in runs:
        row += [V.image_token_id] * n + [int(TEXT[-1])]
    return np.array([row], dtype=np.int64)


def pixels(*shape: int, value: float = 0.5, dtype=np.float64) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


ONE_IMAGE = tokens_with(V.tokens_per_image)
NAN_IMAGE = pixels(1, *SHAPE)
NAN_IMAGE[0, 1, 2, 0] = np.nan
BAD_IMAGES = {  # (config, tokens, pixel_values)
    "wrong image size": (CONFIG, ONE_IMAGE, pixels(1, V.n_channels, V.image_size + 1, V.image_size + 1)),
    "wrong channel count": (CONFIG, ONE_IMAGE, pixels(1, 1, V.image_size, V.image_size)),
    "not 4-d": (CONFIG, ONE_IMAGE, pixels(*SHAPE)),
    "integer pixels": (CONFIG, ONE_IMAGE, pixels(1, *SHAPE, dtype=np.int64)),
    "non-finite pixels": (CONFIG, ONE_IMAGE, NAN_IMAGE),
    "a placeholder short": (CONFIG, tokens_with(V.tokens_per_image - 1), pixels(1, *SHAPE)),
    "two images, one run": (CONFIG, ONE_IMAGE, pixels(2, *SHAPE)),
    "an image, no placeholder": (CONFIG, tokens_with(), pixels(1, *SHAPE)),
    "placeholders without images": (CONFIG, tokens_with(V.tokens_per_image, V.tokens_per_image), None),
    "images without a tower": (tiny("llama3"), tokens_with(), pixels(1, *SHAPE)),
}


def golden_error(call, *args, **kwargs) -> str:
    with pytest.raises((InputError, ValueError)) as golden:
        call(*args, **kwargs)
    return str(golden.value)


def twin_error(call, *args, **kwargs) -> str:
    with pytest.raises((InputError, ValueError)) as twin:
        call(*args, **kwargs)
    return str(twin.value)


@pytest.mark.parametrize("what", list(BAD_IMAGES))
def test_bad_images_get_the_golden_error(what):
    config, tokens, images = BAD_IMAGES[what]
    params = init_params(config, 0)
    expected = golden_error(impl_numpy.forward, config, params, tokens, pixel_values=images)
    model = build(config, params)
    forms = [images] if images is None else [images, torch.from_numpy(images)]  # the NumPy and tensor paths
    for form in forms:
        assert twin_error(model, tokens, pixel_values=form) == expected
        assert twin_error(model, torch.from_numpy(tokens), pixel_values=form) == expected
        assert twin_error(impl_torch.forward, config, params, tokens, pixel_values=form) == expected
    for form in forms:  # the decode and the loss check the same way
        assert twin_error(model.decode, tokens, tokens.shape[1], pixel_values=form) == expected
        assert twin_error(model.loss, tokens, pixel_values=form) == expected


def test_bfloat16_images_with_a_nan_get_the_golden_error():
    expected = golden_error(impl_numpy.forward, CONFIG, PARAMS, ONE_IMAGE, pixel_values=NAN_IMAGE)
    images = torch.from_numpy(NAN_IMAGE).bfloat16()
    assert twin_error(build(CONFIG, PARAMS), ONE_IMAGE, pixel_values=images) == expected


def test_placeholders_after_the_prompt_get_the_golden_error():
    tokens, images = tokens_with(V.tokens_per_image, text=4), pixels(1, *SHAPE)
    expected = golden_error(impl_numpy.decode, CONFIG, PARAMS, tokens, 5, pixel_values=images)
    assert "must all sit in the prompt" in expected
    for form in (images, torch.from_numpy(images)):
        assert twin_error(build(CONFIG, PARAMS).decode, tokens, 5, pixel_values=form) == expected


def test_a_loss_without_a_text_target_gets_the_golden_error():
    tokens = np.array([[int(TEXT[0])] + [V.image_token_id] * V.tokens_per_image])  # every next token a placeholder
    images = pixels(1, *SHAPE)
    expected = golden_error(impl_numpy.loss, CONFIG, PARAMS, tokens, pixel_values=images)
    assert expected.startswith("loss has no target")
    assert twin_error(build(CONFIG, PARAMS).loss, tokens, pixel_values=images) == expected


def test_images_in_the_model_dtype_on_the_model_device():
    """float64 pixels into a float32 model: rounded like any input, the result float32 and
    as the golden's at the float32 row (the conformance suite's cases check the rest)."""
    model, images = build(CONFIG, PARAMS), pixels(1, *SHAPE, value=0.25)
    logits = model(ONE_IMAGE, pixel_values=torch.from_numpy(images))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, model(ONE_IMAGE, pixel_values=images), rtol=0, atol=0)
    assert_close(numpy64(logits), impl_numpy.forward(CONFIG, PARAMS, ONE_IMAGE, pixel_values=images), FLOAT32)
