"""Independent checks of the golden's math (impl_numpy/) against hand formulas, published
constants and other codebases' formulas (MPT, BLOOM, OLMo): norms, activations, the MLP and
ALiBi. RoPE: tests/test_golden_rope.py; the whole model: tests/test_golden_model.py.

Facts: spec/MATH.md and the transformers code it cites (norms, activations, ALiBi).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmref.conformance.cases import case_config
from lmref.impl_numpy.alibi import alibi_bias, alibi_slopes
from lmref.impl_numpy.attention import attention_scores, softmax
from lmref.impl_numpy.mlp import gelu, gelu_tanh, mlp, relu, silu
from lmref.impl_numpy.norms import apply_norm, layer_norm, rms_norm
from lmref.spec import init_params, tiny
from lmref.spec.plan import layer_plan
from tests.naive_model import mpt_slopes, olmo_slopes


def rng(seed: int = 0) -> np.random.Generator:
    # test inputs only (the weights come from init_params); values need not be stable
    return np.random.default_rng(seed)


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
