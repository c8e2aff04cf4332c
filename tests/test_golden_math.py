"""Independent checks of the golden's math (impl_numpy/) against hand formulas, published
constants, other codebases' formulas (HF, MPT, GPT-J) and a naive loop-by-loop model.

Facts: spec/MATH.md and the transformers code it cites (norms, activations, RoPE and its
llama3 scaling, attention with GQA, ALiBi).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from lmref.impl_numpy import KVCache, decode, forward, loss
from lmref.conformance.cases import case_config
from lmref.spec.captures import capture_names
from lmref.impl_numpy.alibi import alibi_bias, alibi_slopes
from lmref.impl_numpy.attention import attention_scores, softmax
from lmref.impl_numpy.mlp import gelu, gelu_tanh, mlp, relu, silu
from lmref.impl_numpy.norms import apply_norm, layer_norm, rms_norm
from lmref.impl_numpy.rope import apply_rope, default_inv_freq, inv_freq, llama3_inv_freq
from lmref.spec import PRESETS, ModelConfig, RopeScaling, get_preset, init_params, param_shapes, tiny
from lmref.spec.plan import Rope, layer_plan
from tests.naive_model import hf_llama3, mpt_slopes, naive_forward, olmo_slopes


def rope_of(config: ModelConfig) -> Rope:
    """The RoPE of a config's first layer (every layer's, in these tests)."""
    return layer_plan(config)[0].rope

TINY = sorted(PRESETS)


def rng(seed: int = 0) -> np.random.Generator:
    # test inputs only (the weights come from init_params); values need not be stable
    return np.random.default_rng(seed)


def tokens_for(config: ModelConfig, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, config.vocab_size, size=(batch, seq))


# --- norms (§1.2) -------------------------------------------------------------------------------


def test_layer_norm_matches_the_direct_formula():
    x = rng().normal(size=(3, 4, 7)) * 3 + 1
    eps = 1e-5
    got = layer_norm(x, eps)
    for row_x, row_y in zip(x.reshape(-1, 7), got.reshape(-1, 7)):
        values = [float(v) for v in row_x]
        mean = math.fsum(values) / len(values)
        var = math.fsum((v - mean) ** 2 for v in values) / len(values)  # biased variance
        expected = [(v - mean) / math.sqrt(var + eps) for v in values]
        np.testing.assert_allclose(row_y, expected, rtol=1e-13, atol=1e-13)


def test_layer_norm_eps_matters_for_small_inputs():
    x = np.array([[-1e-3, 1e-3]])  # variance 1e-6
    assert layer_norm(x, 1e-5)[0, 1] == pytest.approx(1e-3 / math.sqrt(1e-6 + 1e-5), rel=1e-12)
    assert layer_norm(np.full((1, 5), 3.0), 1e-5) == pytest.approx(np.zeros((1, 5)))


def test_rms_norm_matches_the_direct_formula():
    x = rng(1).normal(size=(2, 5, 6)) * 2 + 0.5
    eps = 1e-6
    got = rms_norm(x, eps)
    for row_x, row_y in zip(x.reshape(-1, 6), got.reshape(-1, 6)):
        values = [float(v) for v in row_x]
        rms = math.sqrt(math.fsum(v * v for v in values) / len(values) + eps)
        np.testing.assert_allclose(row_y, [v / rms for v in values], rtol=1e-13)
    # RMSNorm does not subtract the mean, LayerNorm does
    assert not np.allclose(got, layer_norm(x, eps))


def test_apply_norm_affine_and_non_parametric():
    x = rng(2).normal(size=(1, 3, 64))
    gpt2 = tiny("gpt2")  # LayerNorm with weight and bias
    p = init_params(gpt2, 0)
    w, b = p["layers.0.attn_norm.weight"], p["layers.0.attn_norm.bias"]
    np.testing.assert_allclose(apply_norm(gpt2, p, "layers.0.attn_norm", x), layer_norm(x, 1e-5) * w + b,
                               rtol=1e-14)
    olmo = tiny("olmo", d_model=64, n_heads=4)  # no weight, no bias
    np.testing.assert_array_equal(apply_norm(olmo, {}, "final_norm", x), layer_norm(x, olmo.norm_eps))
    llama = tiny("llama1")  # RMSNorm, weight only
    p = init_params(llama, 0)
    np.testing.assert_allclose(apply_norm(llama, p, "final_norm", x),
                               rms_norm(x, 1e-6) * p["final_norm.weight"], rtol=1e-14)


# --- activations (§1.3) -------------------------------------------------------------------------


def test_gelu_known_values():
    assert gelu(np.array(1.0)) == pytest.approx(0.8413447460685429, rel=1e-15)  # Phi(1)
    assert gelu(np.array(-1.0)) == pytest.approx(-0.15865525393145707, rel=1e-14)
    assert gelu(np.array(0.0)) == 0.0
    x = np.linspace(-6, 6, 97)
    expected = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(gelu(x), expected, rtol=1e-14, atol=1e-300)


def test_gelu_tanh_formula():
    x = np.linspace(-6, 6, 97)
    k = math.sqrt(2 / math.pi)
    expected = [0.5 * v * (1 + math.tanh(k * (v + 0.044715 * v**3))) for v in x]
    np.testing.assert_allclose(gelu_tanh(x), expected, rtol=1e-13, atol=1e-15)  # 1 + tanh cancels in the left tail
    assert gelu_tanh(np.array(1.0)) == pytest.approx(0.8411919906082768, rel=1e-14)


def test_gelu_exact_and_tanh_differ():
    x = np.linspace(-4, 4, 801)
    diff = np.abs(gelu(x) - gelu_tanh(x))
    assert abs(gelu(np.array(1.0)) - gelu_tanh(np.array(1.0))) > 1e-4
    assert 1e-4 < diff.max() < 1e-3  # an approximation: close, but not the same function


def test_silu_and_relu():
    x = np.linspace(-30, 30, 121)
    # the golden's x * (1 + tanh(x / 2)) / 2 cancels in the far left tail: tight in absolute terms
    np.testing.assert_allclose(silu(x), [v / (1 + math.exp(-v)) for v in x], rtol=1e-13, atol=1e-14)
    big = np.array([-1e4, 1e4])
    assert np.all(np.isfinite(silu(big)))
    assert silu(big)[1] == 1e4 and silu(big)[0] == pytest.approx(0.0, abs=1e-300)
    np.testing.assert_array_equal(relu(np.array([-2.0, 0.0, 3.0])), [0.0, 0.0, 3.0])


@pytest.mark.parametrize("name", ["gpt2", "llama3"])
def test_mlp_formula(name):
    c = tiny(name)
    p = init_params(c, 1)
    x = rng(3).normal(size=(2, 3, c.d_model))
    P = "layers.1.mlp"
    if c.mlp == "gated":  # SwiGLU: down(silu(x Wg) * (x Wu))
        g, u = x @ p[f"{P}.w_gate"], x @ p[f"{P}.w_up"]
        expected = (g / (1 + np.exp(-g)) * u) @ p[f"{P}.w_down"]
    else:  # GPT-2: down(gelu_tanh(x Wu + bu)) + bd
        u = x @ p[f"{P}.w_up"] + p[f"{P}.b_up"]
        expected = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
        expected = expected @ p[f"{P}.w_down"] + p[f"{P}.b_down"]
    np.testing.assert_allclose(mlp(c, p, P, x), expected, rtol=1e-12, atol=1e-12)


# --- ALiBi slopes (§1.7) -----------------------------------------------------------------------


def bloom_slopes(n: int) -> np.ndarray:
    """BLOOM `build_alibi_tensor`'s slopes, written as in HF."""
    cp2 = 2 ** math.floor(math.log2(n))
    base = 2 ** (-(2 ** -(math.log2(cp2) - 3)))
    slopes = [base**k for k in range(1, cp2 + 1)]
    if cp2 != n:
        extra_base = 2 ** (-(2 ** -(math.log2(2 * cp2) - 3)))
        r = min(cp2, n - cp2)
        slopes += [extra_base**k for k in range(1, 2 * r, 2)]
    return np.array(slopes)


def test_alibi_slopes_8_heads():
    np.testing.assert_array_equal(alibi_slopes(8), [2.0**-k for k in range(1, 9)])


def test_alibi_slopes_12_heads():
    expected_log2 = [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]
    np.testing.assert_allclose(np.log2(alibi_slopes(12)), expected_log2, rtol=0, atol=1e-14)


@pytest.mark.parametrize("n", range(1, 41))
def test_alibi_slopes_match_mpt_and_bloom(n):
    got = alibi_slopes(n)
    assert got.shape == (n,)
    np.testing.assert_allclose(got, mpt_slopes(n), rtol=1e-14)
    np.testing.assert_allclose(got, bloom_slopes(n), rtol=1e-14)


@pytest.mark.parametrize("n", [1, 2, 3, 6, 8, 12, 16, 40])
def test_geometric_alibi_slopes_are_olmos_for_every_head_count(n):
    np.testing.assert_allclose(alibi_slopes(n, 8.0, "geometric"), olmo_slopes(n), rtol=1e-15)
    np.testing.assert_allclose(alibi_slopes(n, 4.0, "geometric"), olmo_slopes(n, 4.0), rtol=1e-15)


def test_the_two_slope_rules_agree_on_powers_of_two_only():
    for n in range(1, 41):
        same = np.allclose(alibi_slopes(n, rule="geometric"), alibi_slopes(n, rule="press"), rtol=1e-14, atol=0)
        assert same == (n & (n - 1) == 0), n


def test_olmo_alibi_golden_uses_olmos_slopes_at_six_heads():
    """The golden cases of olmo-alibi run 6 heads (conformance/cases.py), where the rules differ."""
    config = case_config("olmo-alibi")
    assert config.n_heads == 6 and config.alibi_slopes == "geometric"
    slopes = alibi_slopes(config.n_heads, config.alibi_max_bias, config.alibi_slopes)
    np.testing.assert_allclose(slopes, olmo_slopes(6), rtol=1e-15)
    assert np.abs(olmo_slopes(6) - mpt_slopes(6)).max() > 0.1


def test_alibi_max_bias():
    np.testing.assert_allclose(alibi_slopes(4, 4.0), [2.0**-1, 2.0**-2, 2.0**-3, 2.0**-4], rtol=1e-15)
    np.testing.assert_allclose(alibi_slopes(6, 16.0), mpt_slopes(6, 16.0), rtol=1e-14)


def test_alibi_bias_is_minus_slope_times_distance():
    slopes = np.array([0.5, 0.25])
    bias = alibi_bias(slopes, np.arange(2, 5), np.arange(5))
    assert bias.shape == (2, 3, 5)
    for h in range(2):
        for qi, q in enumerate(range(2, 5)):
            for k in range(5):
                assert bias[h, qi, k] == -slopes[h] * (q - k)


def test_alibi_scores_equal_blooms_key_bias_after_softmax():
    # BLOOM adds +slope * k; within a softmax row that is a constant shift of -slope * (q - k)
    c = tiny("olmo-alibi")
    q = rng(4).normal(size=(1, 6, c.n_heads, c.head_dim))
    k = rng(5).normal(size=(1, 6, c.n_heads, c.head_dim))
    pos = np.arange(6)
    ours = softmax(attention_scores(c, layer_plan(c)[0], q, k, pos, pos))
    raw = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c.head_dim)
    bloom = raw + bloom_slopes(c.n_heads)[None, :, None, None] * pos[None, None, None, :]
    bloom = np.where(pos[None, :] <= pos[:, None], bloom, -np.inf)
    np.testing.assert_allclose(ours, softmax(bloom), rtol=1e-12, atol=1e-15)
    # and the bias is really there: without it the probabilities differ
    plain = np.where(pos[None, :] <= pos[:, None], raw, -np.inf)
    assert not np.allclose(ours, softmax(plain), atol=1e-3)


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


VARIANTS = {f"tiny-{n}": tiny(n) for n in TINY} | {
    "interleaved-partial": tiny("llama1", rope_layout="interleaved", rope_fraction=0.5),
    "neox-partial-biases": tiny("gpt2", position="rope", rope_fraction=0.25, lm_head_bias=True,
                                tie_embeddings=False),
    "alibi-6-heads-mqa": tiny("olmo-alibi", n_heads=6, n_kv_heads=1, d_model=96, qkv_clip=0.5),
    "linear-scaling-gelu-geglu": tiny("llama3", rope_scaling=RopeScaling(kind="linear", factor=3.0),
                                      activation="gelu", mlp_bias=True),
    "relu-plain-odd": tiny("gpt2", activation="relu", n_heads=5, n_kv_heads=5, d_model=80, d_ff=104),
    # BLOOM's embedding norm before a scale and learned positions (the order of spec/MATH.md, "Block")
    "embedding-norm-scaled-learned-rmsnorm": tiny("gpt2", embedding_norm=True, embedding_scale="sqrt_d_model",
                                                  norm="rmsnorm", norm_bias=False, activation="gelu_tanh_truncated"),
    # LongRoPE past its original context (8 tokens > O = 4): the long factors, the attention factor
    "longrope-past-its-context": tiny("phi-3-mini-128k", rope_scaling=dataclasses.replace(
        tiny("phi-3-mini-128k").rope_scaling, original_max_seq_len=4)),
    "logit-scale-before-softcap": tiny("gemma2-9b", logit_scale=4.0),  # 4x the logits: the softcap bends them
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_matches_a_naive_loop_implementation(name):
    c = VARIANTS[name]
    p = init_params(c, 11)
    tokens = tokens_for(c, 2, 8, seed=1)  # longer than tiny()'s windows (5) and chunks (4)
    got = forward(c, p, tokens)
    expected = naive_forward(c, p, tokens)
    assert got.shape == (2, 8, c.vocab_size)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)


def test_naive_model_detects_a_wrong_scale(monkeypatch):
    # the comparison above is sensitive: the golden with the 1/sqrt(head_dim) dropped disagrees
    import lmref.impl_numpy.attention as attention_module

    c = tiny("llama3")
    p = init_params(c, 11)
    tokens = tokens_for(c, 1, 5, seed=1)
    ok = naive_forward(c, p, tokens)
    orig = attention_module.attention_scores
    monkeypatch.setattr(attention_module, "attention_scores",
                        lambda config, plan, q, k, qp, kp: orig(config, plan, q, k, qp, kp) / config.attn_scale)
    assert not np.allclose(forward(c, p, tokens), ok, rtol=1e-6, atol=1e-6)


# --- attention and model properties ----------------------------------------------------------


def _expand_kv_weights(gqa: ModelConfig, params: dict, mapping) -> dict:
    """MHA params whose kv head h is the GQA kv head mapping(h)."""
    hd = gqa.head_dim
    out = dict(params)
    for i in range(gqa.n_layers):
        for w in ("wk", "wv"):
            src = params[f"layers.{i}.attn.{w}"]
            cols = [src[:, mapping(h) * hd:(mapping(h) + 1) * hd] for h in range(gqa.n_heads)]
            out[f"layers.{i}.attn.{w}"] = np.concatenate(cols, axis=1)
    return out


@pytest.mark.parametrize("name,changes", [("llama3", {}), ("llama2-70b", {}),
                                          ("llama1", dict(n_kv_heads=1))])  # GQA 4, GQA 4, MQA
def test_gqa_equals_mha_with_repeated_kv_weights(name, changes):
    gqa = tiny(name, **changes)
    assert gqa.n_kv_heads < gqa.n_heads
    mha = dataclasses.replace(gqa, n_kv_heads=gqa.n_heads)
    p = init_params(gqa, 2)
    tokens = tokens_for(gqa, 2, 6, seed=2)
    expected = forward(gqa, p, tokens)
    group = gqa.kv_group_size
    right = _expand_kv_weights(gqa, p, lambda h: h // group)  # contiguous groups (HF repeat_kv)
    np.testing.assert_allclose(forward(mha, right, tokens), expected, rtol=1e-12, atol=1e-12)
    if gqa.n_kv_heads > 1:  # the other grouping (h % n_kv) is a different model
        wrong = _expand_kv_weights(gqa, p, lambda h: h % gqa.n_kv_heads)
        assert not np.allclose(forward(mha, wrong, tokens), expected, atol=1e-6)


def test_interleaved_model_equals_halves_model_with_permuted_weights():
    # Meta -> HF LLaMA conversion: permuting the q/k columns of each head turns interleaved
    # pairs into rotate-half pairs without changing the model
    inter = tiny("llama3", rope_layout="interleaved")
    halves = dataclasses.replace(inter, rope_layout="halves")
    hd = inter.head_dim
    perm = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    p = init_params(inter, 3)
    q = dict(p)
    for i in range(inter.n_layers):
        for w, heads in (("wq", inter.n_heads), ("wk", inter.n_kv_heads)):
            cols = np.concatenate([h * hd + perm for h in range(heads)])
            q[f"layers.{i}.attn.{w}"] = p[f"layers.{i}.attn.{w}"][:, cols]
    tokens = tokens_for(inter, 2, 7, seed=3)
    expected = forward(inter, p, tokens)
    np.testing.assert_allclose(forward(halves, q, tokens), expected, rtol=1e-11, atol=1e-11)
    assert not np.allclose(forward(halves, p, tokens), expected, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_causality(name):
    c = tiny(name)
    p = init_params(c, 4)
    tokens = tokens_for(c, 1, 8, seed=4)
    changed = tokens.copy()
    changed[0, 5] = (changed[0, 5] + 1) % c.vocab_size
    a, b = forward(c, p, tokens), forward(c, p, changed)
    # equal up to rounding: a MoE layer groups each expert's tokens into one matmul, and
    # position 5 joining or leaving a group may change the kernel's summation order
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=0, atol=1e-12)
    assert np.all(np.abs(a[:, 5:] - b[:, 5:]).max(axis=-1) > 1e-6)


@pytest.mark.parametrize("name", TINY)
def test_batch_rows_are_independent(name):
    c = tiny(name)
    p = init_params(c, 5)
    tokens = tokens_for(c, 3, 6, seed=5)
    together = forward(c, p, tokens)
    for b in range(3):
        np.testing.assert_allclose(forward(c, p, tokens[b:b + 1])[0], together[b], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prompt_len", [1, 4, 9])
@pytest.mark.parametrize("name", TINY)
def test_decode_equals_forward(name, prompt_len):
    c = tiny(name)
    p = init_params(c, 6)
    tokens = tokens_for(c, 2, 9, seed=6)
    np.testing.assert_allclose(decode(c, p, tokens, prompt_len), forward(c, p, tokens), rtol=1e-10, atol=1e-11)


def test_decode_with_an_explicit_cache_at_late_positions():
    c = tiny("olmo-alibi")  # ALiBi: query and key positions must line up through the cache
    p = init_params(c, 7)
    tokens = tokens_for(c, 1, 12, seed=7)
    full = forward(c, p, tokens)
    cache = KVCache.empty(c)
    parts = [forward(c, p, tokens[:, :5], cache=cache), forward(c, p, tokens[:, 5:9], cache=cache),
             forward(c, p, tokens[:, 9:], cache=cache)]
    assert cache.length == 12
    assert cache.keys[1].shape == (1, 12, c.n_kv_heads, c.head_dim)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-10, atol=1e-11)


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


def test_decode_rejects_a_bad_prompt_len():
    c = tiny("llama3")
    p = init_params(c, 0)
    with pytest.raises(ValueError, match=r"prompt_len must be in \[1, 4\], got 0"):
        decode(c, p, tokens_for(c, 1, 4), 0)
    with pytest.raises(ValueError, match=r"prompt_len must be in \[1, 4\], got 5"):
        decode(c, p, tokens_for(c, 1, 4), 5)


@pytest.mark.parametrize("name", ["gpt2", "llama3", "olmo-alibi"])
def test_loss_is_the_direct_cross_entropy(name):
    c = tiny(name)
    p = init_params(c, 8)
    tokens = tokens_for(c, 3, 7, seed=8)
    logits = forward(c, p, tokens)
    terms = [logsumexp(logits[b, t]) - logits[b, t, tokens[b, t + 1]]
             for b in range(3) for t in range(6)]
    assert loss(c, p, tokens) == pytest.approx(math.fsum(terms) / len(terms), rel=1e-12)
    assert isinstance(loss(c, p, tokens), float)


@pytest.mark.parametrize("name", ["palm-8b", "palm-540b"])
def test_the_logit_z_loss_adds_its_weight_times_the_mean_squared_log_normaliser(name):
    """PaLM section 5: loss = ce + coef * log^2 Z, per target and averaged like the cross-entropy
    (t5x losses.py): with and without the weight, the losses differ by exactly coef times the
    mean of logsumexp(logits_t)^2 over the B * (S - 1) rows that have a target (scipy's
    logsumexp; the last position, which has none, is left out)."""
    c = tiny(name)
    p = init_params(c, 8)
    tokens = tokens_for(c, 3, 7, seed=8)
    logits = forward(c, p, tokens)
    squares = [logsumexp(logits[b, t]) ** 2 for b in range(3) for t in range(6)]
    z_loss = math.fsum(squares) / len(squares)
    without = loss(dataclasses.replace(c, logit_z_loss_coef=0.0), p, tokens)
    assert c.logit_z_loss_coef == 1e-4 and z_loss > 1.0  # log Z near log(251): the term is visible
    assert loss(c, p, tokens) - without == pytest.approx(1e-4 * z_loss, rel=1e-9)
    assert loss(dataclasses.replace(c, logit_z_loss_coef=0.5), p, tokens) - without == pytest.approx(
        0.5 * z_loss, rel=1e-12)
    every_row = math.fsum(logsumexp(logits[b, t]) ** 2 for b in range(3) for t in range(7)) / 21
    assert abs(every_row - z_loss) > 1e-6 * z_loss  # the rows counted matter


def test_loss_needs_two_tokens():
    c = tiny("llama3")
    with pytest.raises(ValueError, match="at least 2 tokens"):
        loss(c, init_params(c, 0), tokens_for(c, 1, 1))


def test_uniform_logits_give_log_vocab_loss():
    c = tiny("llama3")
    p = init_params(c, 0)
    p["lm_head.weight"] = np.zeros_like(p["lm_head.weight"])
    assert loss(c, p, tokens_for(c, 2, 5)) == pytest.approx(math.log(c.vocab_size), rel=1e-14)


@pytest.mark.parametrize("name", TINY)
def test_capture_names_order_and_shapes(name):
    c = tiny(name)
    p = init_params(c, 9)
    tokens = tokens_for(c, 2, 5, seed=9)
    captured: dict = {}
    logits = forward(c, p, tokens, capture=captured)
    names = capture_names(c)
    parts = {"dense": ("attn", "mlp", "out"), "moe": ("attn", "router", "mlp", "out")}
    assert names == ["embed", *(f"layers.{i}.{part}" for i, kind in enumerate(c.layer_mlp_kinds)
                                for part in parts[kind]), "final_norm", "logits"]
    assert list(captured) == names
    for n in names[:-1]:
        assert captured[n].shape == ((2, 5, c.moe.n_experts) if n.endswith(".router") else (2, 5, c.d_model)), n
    assert captured["logits"].shape == (2, 5, c.vocab_size)
    np.testing.assert_array_equal(captured["logits"], logits)
    # the residual stream: out_i = out_{i-1} + attn_i + mlp_i
    prev = captured["embed"]
    for i in range(c.n_layers):
        np.testing.assert_allclose(captured[f"layers.{i}.out"],
                                   prev + captured[f"layers.{i}.attn"] + captured[f"layers.{i}.mlp"],
                                   rtol=1e-13, atol=1e-13)
        prev = captured[f"layers.{i}.out"]
    np.testing.assert_allclose(captured["final_norm"], apply_norm(c, p, "final_norm", prev), rtol=1e-14)
    expected_embed = p["embed.tokens"][tokens]
    if c.embedding_norm:  # BLOOM: the norm right after the lookup
        expected_embed = apply_norm(c, p, "embed.norm", expected_embed)
    if c.embedding_scale == "sqrt_d_model":  # Gemma
        expected_embed = expected_embed * math.sqrt(c.d_model)
    if c.position == "learned":
        expected_embed = expected_embed + p["embed.positions"][:5]
    np.testing.assert_array_equal(captured["embed"], expected_embed)


@pytest.mark.parametrize("name", ["gpt2", "olmo", "olmo-alibi"])
def test_tied_head_uses_the_token_embedding(name):
    c = tiny(name)
    assert c.tie_embeddings and "lm_head.weight" not in param_shapes(c)
    p = init_params(c, 10)
    tokens = tokens_for(c, 1, 4, seed=10)
    captured: dict = {}
    logits = forward(c, p, tokens, capture=captured)
    np.testing.assert_allclose(logits, captured["final_norm"] @ p["embed.tokens"].T, rtol=1e-13, atol=1e-13)
    # changing a row of the embedding that no input uses still changes that logit column
    # (by a random vector: OLMo's final LayerNorm output is orthogonal to a constant one)
    unused = next(t for t in range(c.vocab_size) if t not in tokens)
    q = dict(p)
    q["embed.tokens"] = p["embed.tokens"].copy()
    q["embed.tokens"][unused] += rng(10).normal(size=c.d_model)
    other = forward(c, q, tokens)
    assert np.all(np.abs(other[..., unused] - logits[..., unused]) > 1e-6)
    keep = np.arange(c.vocab_size) != unused
    np.testing.assert_allclose(other[..., keep], logits[..., keep], rtol=1e-13, atol=1e-13)


def test_untied_head_uses_lm_head():
    c = tiny("llama3")
    p = init_params(c, 10)
    tokens = tokens_for(c, 1, 4, seed=10)
    captured: dict = {}
    logits = forward(c, p, tokens, capture=captured)
    np.testing.assert_allclose(logits, captured["final_norm"] @ p["lm_head.weight"], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", TINY)
def test_float32_params_stay_float32_and_close(name):
    # impl_numpy/__init__.py: "the functions keep whatever float dtype the params have (the
    # tests use that to build a float32 positive control)".  Every captured intermediate must
    # then be float32, and close to the float64 golden.
    c = tiny(name)
    p = init_params(c, 0)
    tokens = tokens_for(c, 1, 6)
    ref = forward(c, p, tokens)
    captured: dict = {}
    low = forward(c, {k: v.astype(np.float32) for k, v in p.items()}, tokens, capture=captured)
    assert {k: str(v.dtype) for k, v in captured.items()} == {k: "float32" for k in captured}
    np.testing.assert_allclose(low, ref, rtol=1e-3, atol=1e-3)
    assert not np.array_equal(low.astype(np.float64), ref)
