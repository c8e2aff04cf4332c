"""Independent checks of the golden's RoPE (impl_numpy/rope.py) against HF's rotate_half,
GPT-J's rotate_every_two, the llama3 scaling's published bands and LongRoPE's formula.

Facts: spec/MATH.md §1.4 and "LongRoPE", and the transformers code it cites.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmref.impl_numpy import decode, forward
from lmref.impl_numpy.rope import apply_rope, default_inv_freq, inv_freq, llama3_inv_freq
from lmref.spec import ModelConfig, RopeScaling, get_preset, init_params, tiny
from lmref.spec.plan import Rope, layer_plan
from tests.naive_model import hf_llama3


def rope_of(config: ModelConfig) -> Rope:
    """The RoPE of a config's first layer (every layer's, in these tests)."""
    return layer_plan(config)[0].rope


def rng(seed: int = 0) -> np.random.Generator:
    # test inputs only (the weights come from init_params); values need not be stable
    return np.random.default_rng(seed)


def tokens_for(config: ModelConfig, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, config.vocab_size, size=(batch, seq))


# --- RoPE (§1.4) --------------------------------------------------------------------------------


def rope_config(**changes) -> ModelConfig:
    return tiny("llama1", **changes)  # head_dim 16, theta 1e4


def hf_rotate_half(config: ModelConfig, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """HF LLaMA: emb = cat(freqs, freqs); x * cos + rotate_half(x) * sin, on the first rope_dim dims."""
    r = config.rope_dim
    inv = np.array([config.rope_theta ** (-(2 * i) / r) for i in range(r // 2)])
    freqs = positions[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)[None, :, None, :]
    rot = x[..., :r]
    rotate_half = np.concatenate([-rot[..., r // 2:], rot[..., : r // 2]], axis=-1)
    return np.concatenate([rot * np.cos(emb) + rotate_half * np.sin(emb), x[..., r:]], axis=-1)


def gptj_rotate_every_two(config: ModelConfig, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """GPT-J: sin/cos repeat_interleave'd; x * cos + rotate_every_two(x) * sin."""
    r = config.rope_dim
    inv = np.array([config.rope_theta ** (-(2 * i) / r) for i in range(r // 2)])
    freqs = positions[:, None] * inv[None, :]
    sin = np.repeat(np.sin(freqs), 2, axis=-1)[None, :, None, :]
    cos = np.repeat(np.cos(freqs), 2, axis=-1)[None, :, None, :]
    rot = x[..., :r]
    every_two = np.stack([-rot[..., 1::2], rot[..., 0::2]], axis=-1).reshape(rot.shape)
    return np.concatenate([rot * cos + every_two * sin, x[..., r:]], axis=-1)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.25])
def test_rope_halves_matches_hf(fraction):
    c = rope_config(rope_fraction=fraction)
    x = rng(6).normal(size=(2, 9, 3, c.head_dim))
    pos = np.arange(9) + 3
    np.testing.assert_allclose(apply_rope(rope_of(c), x, pos), hf_rotate_half(c, x, pos), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_interleaved_matches_gptj(fraction):
    c = rope_config(rope_layout="interleaved", rope_fraction=fraction)
    x = rng(7).normal(size=(2, 9, 3, c.head_dim))
    pos = np.arange(9)
    np.testing.assert_allclose(apply_rope(rope_of(c), x, pos), gptj_rotate_every_two(c, x, pos), rtol=1e-12, atol=1e-13)


def test_default_inv_freq():
    np.testing.assert_allclose(default_inv_freq(10_000.0, 8), [1.0, 0.1, 0.01, 0.001], rtol=1e-14)


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_layouts_differ_but_relate_by_a_permutation(fraction):
    halves = rope_config(rope_fraction=fraction)
    inter = rope_config(rope_layout="interleaved", rope_fraction=fraction)
    r, hd = halves.rope_dim, halves.head_dim
    # interleaved pair i is dims (2i, 2i+1); halves pair i is dims (i, i + r/2)
    perm = np.concatenate([np.arange(0, r, 2), np.arange(1, r, 2), np.arange(r, hd)])
    inverse = np.argsort(perm)
    x = rng(8).normal(size=(1, 7, 2, hd))
    pos = np.arange(7)
    a, b = apply_rope(rope_of(inter), x, pos), apply_rope(rope_of(halves), x, pos)
    assert not np.allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(a, apply_rope(rope_of(halves), x[..., perm], pos)[..., inverse], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_rope_preserves_each_pair_norm(layout):
    c = rope_config(rope_layout=layout)
    r = c.rope_dim
    x = rng(9).normal(size=(1, 11, 2, c.head_dim))
    y = apply_rope(rope_of(c), x, np.arange(11) * 37)
    if layout == "halves":
        pairs = [(i, i + r // 2) for i in range(r // 2)]
    else:
        pairs = [(2 * i, 2 * i + 1) for i in range(r // 2)]
    for i, j in pairs:
        np.testing.assert_allclose(x[..., i] ** 2 + x[..., j] ** 2, y[..., i] ** 2 + y[..., j] ** 2, rtol=1e-12)
    assert not np.allclose(x[:, 1:], y[:, 1:], atol=1e-3)  # it did rotate


def test_rope_position_zero_is_the_identity():
    c = rope_config()
    x = rng(10).normal(size=(1, 1, 2, c.head_dim))
    np.testing.assert_array_equal(apply_rope(rope_of(c), x, np.array([0])), x)


def _rotated_dot(config, q, k, m, n):
    """q . k after rotating q to position m and k to position n (one head)."""
    qr = apply_rope(rope_of(config), q[None, None, None, :], np.array([m]))[0, 0, 0]
    kr = apply_rope(rope_of(config), k[None, None, None, :], np.array([n]))[0, 0, 0]
    return float(qr @ kr)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(1, 500),
       layout=st.sampled_from(["halves", "interleaved"]), fraction=st.sampled_from([1.0, 0.5]))
def test_rope_scores_depend_only_on_the_position_difference(m, n, shift, layout, fraction):
    c = rope_config(rope_layout=layout, rope_fraction=fraction)
    q, k = rng(m * 1000 + n).normal(size=(2, c.head_dim))
    assert _rotated_dot(c, q, k, m, n) == pytest.approx(_rotated_dot(c, q, k, m + shift, n + shift),
                                                        rel=1e-9, abs=1e-9)


def test_rope_scores_change_with_the_difference():
    c = rope_config()
    q, k = rng(11).normal(size=(2, c.head_dim))
    dots = {_rotated_dot(c, q, k, 10, 10 - d) for d in range(5)}
    assert len(dots) == 5


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
def test_partial_rope_leaves_the_tail_untouched(layout):
    c = rope_config(rope_layout=layout, rope_fraction=0.25)
    assert c.rope_dim == 4
    x = rng(12).normal(size=(2, 5, 3, c.head_dim))
    y = apply_rope(rope_of(c), x, np.arange(5) + 1)
    np.testing.assert_array_equal(y[..., 4:], x[..., 4:])
    assert not np.allclose(y[..., :4], x[..., :4], atol=1e-3)


def test_linear_scaling_slows_positions_down():
    plain = rope_config()
    linear = rope_config(rope_scaling=RopeScaling(kind="linear", factor=4.0))
    np.testing.assert_allclose(inv_freq(rope_of(linear)), inv_freq(rope_of(plain)) / 4.0, rtol=1e-15)
    x = rng(13).normal(size=(1, 5, 2, plain.head_dim))
    p = np.arange(5) * 3
    np.testing.assert_allclose(apply_rope(rope_of(linear), x, 4 * p), apply_rope(rope_of(plain), x, p), rtol=1e-9, atol=1e-12)


def test_llama3_scaling_at_real_size_has_29_6_29_bands():
    c = get_preset("llama3.1")  # theta 5e5, head_dim 128, factor 8, low 1, high 4, orig 8192
    plain = default_inv_freq(c.rope_theta, c.rope_dim)
    scaled = inv_freq(rope_of(c))
    assert scaled.shape == (64,)
    unchanged = scaled == plain
    divided = np.isclose(scaled, plain / 8.0, rtol=1e-14, atol=0)
    smoothed = ~unchanged & ~divided
    assert (int(unchanged.sum()), int(smoothed.sum()), int(divided.sum())) == (29, 6, 29)
    assert np.all(unchanged[:29]) and np.all(smoothed[29:35]) and np.all(divided[35:])
    np.testing.assert_allclose(scaled, hf_llama3(5e5, 128, 8.0, 1.0, 4.0, 8192), rtol=1e-13)


def test_llama3_scaling_matches_hf_at_tiny_size():
    c = tiny("llama3.1")
    s = c.rope_scaling
    expected = hf_llama3(c.rope_theta, c.rope_dim, s.factor, s.low_freq_factor, s.high_freq_factor,
                         s.original_max_seq_len)
    np.testing.assert_allclose(inv_freq(rope_of(c)), expected, rtol=1e-13)
    np.testing.assert_allclose(llama3_inv_freq(default_inv_freq(c.rope_theta, c.rope_dim), s), expected, rtol=1e-13)


# --- LongRoPE (spec/MATH.md, "LongRoPE") ------------------------------------------------------------

LONGROPE = tiny("phi-3-mini-128k")  # original context O = 32, factors 1.1 .. 64.8


def test_longrope_switches_every_position_to_the_long_factors_past_the_original_context():
    """A sequence of O tokens and one of O + 1 share their first O tokens, yet every position's
    logits differ (the whole sequence rotates with the long factors); O - 1 and O agree."""
    p, o = init_params(LONGROPE, 3), LONGROPE.rope_scaling.original_max_seq_len
    tokens = tokens_for(LONGROPE, 1, o + 1, seed=3)
    at_o, past_o = forward(LONGROPE, p, tokens[:, :o]), forward(LONGROPE, p, tokens)
    np.testing.assert_allclose(forward(LONGROPE, p, tokens[:, : o - 1]), at_o[:, : o - 1], rtol=1e-10, atol=1e-11)
    assert np.abs(past_o[:, 1:o] - at_o[:, 1:]).min(axis=-1).max() > 0  # every position moved
    assert np.abs(past_o[:, :o] - at_o).max() > 0.1
    np.testing.assert_allclose(past_o[:, 0], at_o[:, 0], rtol=1e-10, atol=1e-11)  # position 0 rotates by 0


def test_longrope_rotation_is_the_published_formula():
    """inv_freq_i = theta^(-2i/r) / factor_i (long past O), cos and sin times
    sqrt(1 + ln(factor) / ln(O)) (HF `_compute_longrope_parameters`), on one vector."""
    s, rope = LONGROPE.rope_scaling, layer_plan(LONGROPE)[0].rope
    x = np.random.default_rng(0).normal(size=(1, 1, 1, LONGROPE.head_dim))
    for length, factors in ((s.original_max_seq_len, s.short_factor), (s.original_max_seq_len + 1, s.long_factor)):
        pos = length - 1
        freqs = default_inv_freq(LONGROPE.rope_theta, LONGROPE.rope_dim) / np.array(factors)
        scale = math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_seq_len))
        half = LONGROPE.rope_dim // 2
        a, b = x[..., :half], x[..., half:]
        cos, sin = np.cos(pos * freqs) * scale, np.sin(pos * freqs) * scale
        expected = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
        got = apply_rope(rope, np.repeat(x, length, axis=1), np.arange(length))[:, -1:]  # the last of `length`
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("prompt_len", [1, 29, 30, 33])
def test_longrope_decode_is_a_prefill_of_each_prefix(prompt_len):
    """Step t's logits are a prefill's of tokens 0..t; the step that crosses O re-runs the
    sequence (a rotation of the cached keys would mend the first layer only)."""
    p, o = init_params(LONGROPE, 5), LONGROPE.rope_scaling.original_max_seq_len
    tokens = tokens_for(LONGROPE, 2, o + 4, seed=5)
    expected = np.concatenate([forward(LONGROPE, p, tokens[:, :prompt_len])] + [
        forward(LONGROPE, p, tokens[:, : t + 1])[:, -1:] for t in range(prompt_len, o + 4)], axis=1)
    np.testing.assert_allclose(decode(LONGROPE, p, tokens, prompt_len), expected, rtol=1e-10, atol=1e-11)
