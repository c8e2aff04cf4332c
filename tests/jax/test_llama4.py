"""Llama 4's attention in the JAX twin (issue 12) against the float64 golden, on the tiny Llama 4
presets (spec/presets/llama4.py):

    attn.qk_norm.l2     weightless RMSNorm of each q / k head after the RoPE, RoPE layers only
    attn.temperature    the NoPE layers' queries times log1p(floor((p + 1) / floor)) * scale + 1
    rope.scaling.llama3 with high_freq_factor == low_freq_factor (Scout): no smoothed band

The tiny chunk (4) and temperature floor (4) are shorter than the sequence (11): the chunked
mask hides keys and the temperature grows inside the sequence, in prefill and in each decode
step (whose position is traced under jit).  The MoE is tests/jax/test_moe.py's; here the
inputs only keep routing margins (`routed_case`), so that float32 and finite differences choose
the golden's experts.  Each knob is alive: switching it off moves the golden's logits, and the
twin follows the golden both ways.  Float64 runs with x64 on.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmref import impl_jax
from lmref import impl_numpy
from lmref.impl_jax import KVCache
from lmref.impl_jax.attention import query_temperature
from lmref.impl_jax.norms import l2_norm, rms_norm
from lmref.impl_jax.rope import inv_freq
from lmref.impl_numpy.attention import query_temperature as golden_temperature
from lmref.impl_numpy.rope import inv_freq as golden_inv_freq
from lmref.spec.captures import capture_names
from lmref.spec.config import ModelConfig
from lmref.spec.features import LLAMA4, required_features
from lmref.spec.plan import layer_plan
from lmref.spec.presets import PRESETS, tiny
from tests.jax.common import FLOAT32, assert_float32_close
from tests.jax.test_grad import ATOL, RTOL, golden_slope, unit_direction
from tests.jax.test_issue11_features import assert_float64_close
from tests.jax.test_moe import FD_GAP, routed_case

ARCHS = ("llama4-scout", "llama4-maverick")
ALIVE = 1e-3  # the least max |logits change| that counts a knob as acting
OFF = {  # each knob of Llama 4's attention, switched off
    "qk_norm": dict(qk_norm="none"),
    "temperature": dict(attn_temperature_floor=None, attn_temperature_scale=None),
    "rope_scaling": dict(rope_scaling=None),
}
KNOBS = [("llama4-scout", knob) for knob in OFF] + [("llama4-maverick", "temperature")]


@functools.cache
def example(arch: str) -> tuple[ModelConfig, int, dict, np.ndarray]:
    """tiny(arch), the first seed whose golden routing gaps all clear FD_GAP on tokens [2, 11],
    its weights and the tokens (shared: never modified)."""
    config = tiny(arch)
    return (config, *routed_case(config, FD_GAP))


def test_the_presets_need_the_llama4_features_and_the_twin_declares_them():
    scout, maverick = (required_features(tiny(arch)) for arch in ARCHS)
    assert set(LLAMA4) <= scout and "rope.scaling.llama3" in scout
    assert "attn.temperature" in maverick and "attn.qk_norm.l2" not in maverick
    assert set(LLAMA4) <= impl_jax.FEATURES


def test_query_temperature_matches_the_golden_at_traced_positions():
    """Under jit (the positions traced, as in a decode step), the full-size floor (8192) and the
    tiny one, far into the context: integer floors, exact at every position."""
    positions = np.array([0, 1, 2, 3, 4, 7, 8190, 8191, 8192, 16383, 16384, 10**6, 2**20 - 1])
    for temperature in [(8192, 0.1), (4, 0.1), (3, 0.25)]:
        ref = golden_temperature(temperature, positions)
        for dtype, x64, tol in [(jnp.float64, True, 1e-15), (jnp.float32, False, 1e-6)]:
            with jax.enable_x64(x64):
                got = jax.jit(query_temperature, static_argnums=(0, 2))(temperature, jnp.asarray(positions), dtype)
                assert got.shape == positions.shape and got.dtype == dtype
                np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=tol, atol=0)
    at_full_size = golden_temperature((8192, 0.1), positions)
    assert at_full_size[6] == 1.0 < at_full_size[7]  # 1 up to position 8190, > 1 from 8191 = floor - 1 on


def test_llama3_rope_with_equal_frequency_factors_divides_or_keeps():
    """Scout (high_freq_factor == low_freq_factor == 1): the golden's frequencies exactly, and at
    both sizes some are divided by the factor and some kept (no 0 / 0 in a smoothed band)."""
    for config in (PRESETS["llama4-scout"], tiny("llama4-scout")):
        rope = layer_plan(config)[0].rope
        plain = golden_inv_freq(dataclasses.replace(rope, scaling=None))
        got = inv_freq(rope)
        np.testing.assert_array_equal(got, golden_inv_freq(rope))
        assert np.all(np.isfinite(got)) and np.any(got == plain) and np.any(got == plain / rope.scaling.factor)


def test_the_weightless_qk_norm_runs_in_float32_at_least():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 16)) * 300  # [B, S, H, hd]
    low = x.astype(jnp.bfloat16)
    got = l2_norm(low, 1e-5)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32),
                                  np.asarray(rms_norm(low.astype(jnp.float32), 1e-5).astype(jnp.bfloat16), np.float32))


def float64_logits(config: ModelConfig, params: dict, tokens: np.ndarray, capture: dict | None = None) -> np.ndarray:
    with jax.enable_x64(True):
        logits = impl_jax.forward(config, impl_jax.from_canonical(params, "float64"), tokens, capture=capture)
        assert logits.dtype == np.float64
        return np.asarray(logits)


@pytest.mark.parametrize("arch, knob", KNOBS, ids=[f"{a}-{k}" for a, k in KNOBS])
def test_each_knob_is_alive_and_the_twin_tracks_the_golden_both_ways(arch, knob):
    config, _, params, tokens = example(arch)
    off = dataclasses.replace(config, **OFF[knob])
    assert required_features(off) < required_features(config)
    ref, ref_off = impl_numpy.forward(config, params, tokens), impl_numpy.forward(off, params, tokens)
    change = float(np.abs(ref - ref_off).max())
    assert change > ALIVE, f"{arch}: {knob} moves the golden's logits by {change:.1e} only"
    for c, expected in [(config, ref), (off, ref_off)]:
        assert_float64_close(float64_logits(c, params, tokens), expected, f"{c.name} {knob}")


@pytest.mark.parametrize("arch", ARCHS)
def test_float64_prefill_and_captures_match_the_golden(arch):
    config, _, params, tokens = example(arch)
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, capture=golden)
    captured: dict = {}
    assert_float64_close(float64_logits(config, params, tokens, captured), ref, f"{arch}: logits")
    assert list(captured) == list(golden) == capture_names(config)
    for component, value in golden.items():
        assert_float64_close(captured[component], value, f"{arch}: capture {component}")


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_through_the_cache_equals_prefill(arch):
    """float64: token by token after prompts of 1 and 5 (each step's temperature at its absolute
    position), chunks of 4, 3, 4, against the golden and the twin's own prefill; float32:
    prefill and decode within the float32 row."""
    config, _, params, tokens = example(arch)
    ref = impl_numpy.forward(config, params, tokens)
    prefill = float64_logits(config, params, tokens)
    with jax.enable_x64(True):
        params64 = impl_jax.from_canonical(params, "float64")
        for prompt_len in (1, 5):
            decoded = impl_jax.decode(config, params64, tokens, prompt_len)
            assert_float64_close(decoded, ref, f"{arch}: decode after {prompt_len}")
            assert_float64_close(decoded, prefill, f"{arch}: decode after {prompt_len} vs prefill")
        cache, chunks = KVCache.empty(config, tokens.shape[0], jnp.float64), []
        for chunk in np.split(tokens, [4, 7], axis=1):
            logits, cache = impl_jax.forward(config, params64, chunk, cache)
            chunks.append(np.asarray(logits))
        assert int(cache.length) == tokens.shape[1]
    assert_float64_close(np.concatenate(chunks, axis=1), ref, f"{arch}: chunked prefill")
    params32 = impl_jax.from_canonical(params)
    assert_float32_close(impl_jax.forward(config, params32, tokens), ref, f"{arch}: float32 prefill")
    assert_float32_close(impl_jax.decode(config, params32, tokens, 1), ref, f"{arch}: float32 decode")


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_and_gradient_match_the_golden(arch):
    """The loss in float64 and float32 against the golden's; the float64 gradient along a random
    unit direction against central finite differences of the golden loss."""
    config, seed, params, tokens = example(arch)
    ref = impl_numpy.loss(config, params, tokens)
    loss32 = float(impl_jax.loss(config, impl_jax.from_canonical(params), tokens))
    assert loss32 == pytest.approx(ref, rel=FLOAT32.loss_rtol, abs=FLOAT32.loss_atol)
    direction = unit_direction(params, seed)
    with jax.enable_x64(True):
        value, grads = jax.value_and_grad(impl_jax.loss, argnums=1)(
            config, impl_jax.from_canonical(params, "float64"), tokens)
    assert float(value) == pytest.approx(ref, rel=1e-12)
    slope = sum(float(np.vdot(np.asarray(grads[k]), direction[k])) for k in params)
    expected = golden_slope(config, params, tokens, direction)
    assert abs(slope - expected) <= ATOL + RTOL * abs(expected), f"grad . d = {slope!r}, fd = {expected!r}"
