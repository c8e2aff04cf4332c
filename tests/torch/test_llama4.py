"""Llama 4's attention in the torch twin (issue 12) against the float64 golden, on the tiny
Llama 4 presets (spec/presets/llama4.py):

    attn.qk_norm.l2     weightless RMSNorm of each q / k head after the RoPE, RoPE layers only
    attn.temperature    the NoPE layers' queries times log1p(floor((p + 1) / floor)) * scale + 1
    rope.scaling.llama3 with high_freq_factor == low_freq_factor (Scout): no smoothed band

The tiny presets keep every flag; their chunk (4) and temperature floor (4) are shorter than
the sequence (11), so the chunked mask hides keys and the temperature grows inside it, in
prefill and in every decode step.  The MoE (sigmoid top-1 on the expert input, shared expert)
is tests/torch/test_moe.py's; here its routing only needs margins (`routed_tokens`), so that
float32 and finite differences choose the golden's experts.  Each knob is alive: switching it
off moves the golden's logits, and the twin follows the golden both ways.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from lmref import impl_numpy
from lmref import impl_torch
from lmref.impl_numpy.attention import query_temperature as golden_temperature
from lmref.impl_numpy.rope import inv_freq as golden_inv_freq
from lmref.impl_torch.attention import ATTN_IMPLS, query_temperature
from lmref.impl_torch.norms import l2_norm
from lmref.impl_torch.rope import inv_freq
from lmref.spec import PRESETS, init_params, tiny
from lmref.spec.captures import capture_names
from lmref.spec.config import ModelConfig
from lmref.spec.features import LLAMA4, required_features
from lmref.spec.plan import layer_plan
from tests.torch.helpers import FLOAT32, FLOAT64, assert_close, build, float32_row, numpy64, routed_tokens
from tests.torch.test_grad import canonical_grads, directional_fd

ARCHS = ("llama4-scout", "llama4-maverick")
SEED = 0
SHAPE = (2, 11)  # [B, S]: S past the tiny chunk (4) and temperature floor (4), twice
MARGIN = 1e-3  # routing gaps: float32 router logits are off by ~1e-6 here
ALIVE = 1e-3  # the least max |logits change| that counts a knob as acting
OFF = {  # each knob of Llama 4's attention, switched off
    "qk_norm": dict(qk_norm="none"),
    "temperature": dict(attn_temperature_floor=None, attn_temperature_scale=None),
    "rope_scaling": dict(rope_scaling=None),
}
KNOBS = [("llama4-scout", knob) for knob in OFF] + [("llama4-maverick", "temperature")]


@functools.cache
def example(arch: str) -> tuple[ModelConfig, dict, np.ndarray]:
    """tiny(arch), its weights, and tokens [B, S] at least MARGIN from a routing flip (shared:
    never modified)."""
    config = tiny(arch)
    params = init_params(config, SEED)
    return config, params, routed_tokens(config, params, SHAPE, MARGIN, seed=SEED)


def test_the_presets_need_the_llama4_features_and_the_twin_declares_them():
    scout, maverick = (required_features(tiny(arch)) for arch in ARCHS)
    assert set(LLAMA4) <= scout and "rope.scaling.llama3" in scout
    assert "attn.temperature" in maverick and "attn.qk_norm.l2" not in maverick
    assert set(LLAMA4) <= impl_torch.FEATURES
    plans = layer_plan(tiny("llama4-scout"))
    assert [p.qk_norm for p in plans] == ["l2", "l2", "l2", "none"]  # the NoPE layer has no QK norm
    assert [p.temperature is not None for p in plans] == [p.rope is None for p in plans] == [False] * 3 + [True]


def test_query_temperature_matches_the_golden_at_every_position():
    """[P, 1, S, 1] at the absolute positions [P, S], the full-size floor (8192) and the tiny
    one, far into the context: exact integer floors, no position-dependent branch."""
    positions = np.array([0, 1, 2, 3, 4, 7, 8190, 8191, 8192, 16383, 16384, 10**6, 2**20 - 1])
    for temperature in [(8192, 0.1), (4, 0.1), (3, 0.25)]:
        ref = golden_temperature(temperature, positions)
        for dtype, tol in [(torch.float64, 1e-15), (torch.float32, 1e-6)]:
            got = query_temperature(temperature, torch.from_numpy(positions)[None], dtype)
            assert got.shape == (1, 1, len(positions), 1) and got.dtype == dtype
            np.testing.assert_allclose(numpy64(got)[0, 0, :, 0], ref, rtol=tol, atol=0)
    at_full_size = golden_temperature((8192, 0.1), positions)
    assert at_full_size[6] == 1.0 < at_full_size[7]  # 1 up to position 8190, > 1 from 8191 = floor - 1 on


def test_llama3_rope_with_equal_frequency_factors_divides_or_keeps():
    """Scout (high_freq_factor == low_freq_factor == 1): every frequency is the golden's, finite,
    and at both sizes some are divided by the factor and some kept."""
    for config in (PRESETS["llama4-scout"], tiny("llama4-scout")):
        rope = layer_plan(config)[0].rope
        plain = golden_inv_freq(dataclasses.replace(rope, scaling=None))
        ref = golden_inv_freq(rope)
        assert np.all(np.isfinite(ref)) and np.any(ref == plain) and np.any(ref == plain / rope.scaling.factor)
        np.testing.assert_allclose(numpy64(inv_freq(rope, torch.float64, "cpu")), ref, rtol=1e-15, atol=0)
        assert torch.all(torch.isfinite(inv_freq(rope, torch.float32, "cpu")))


def test_the_weightless_qk_norm_runs_in_float32_at_least():
    x = torch.randn(2, 4, 3, 16, generator=torch.Generator().manual_seed(0)) * 300  # fp16 squares overflow
    for dtype in (torch.bfloat16, torch.float16):
        low = x.to(dtype)
        got = l2_norm(low, 1e-5)
        assert got.dtype == dtype
        assert torch.all(torch.isfinite(got))
        torch.testing.assert_close(got, l2_norm(low.float(), 1e-5).to(dtype), rtol=0, atol=0)


@pytest.mark.parametrize("arch, knob", KNOBS, ids=[f"{a}-{k}" for a, k in KNOBS])
def test_each_knob_is_alive_and_the_twin_tracks_the_golden_both_ways(arch, knob):
    config, params, tokens = example(arch)
    off = dataclasses.replace(config, **OFF[knob])
    assert required_features(off) < required_features(config)
    ref, ref_off = impl_numpy.forward(config, params, tokens), impl_numpy.forward(off, params, tokens)
    change = float(np.abs(ref - ref_off).max())
    assert change > ALIVE, f"{arch}: {knob} moves the golden's logits by {change:.1e} only"
    for c, expected in [(config, ref), (off, ref_off)]:
        assert_close(numpy64(build(c, params, torch.float64)(tokens)), expected, FLOAT64, f"{c.name} {knob}")


@pytest.mark.parametrize("attn_impl", ATTN_IMPLS)
@pytest.mark.parametrize("arch", ARCHS)
def test_float64_prefill_and_captures_match_the_golden(arch, attn_impl):
    config, params, tokens = example(arch)
    ref: dict = {}
    impl_numpy.forward(config, params, tokens, capture=ref)
    got: dict = {}
    build(config, params, torch.float64, attn_impl)(tokens, capture=got)
    assert list(got) == list(ref) == capture_names(config)
    for name, value in ref.items():
        assert_close(numpy64(got[name]), value, FLOAT64, f"{arch} {attn_impl} {name}")


@pytest.mark.parametrize("attn_impl", ATTN_IMPLS)
@pytest.mark.parametrize("arch", ARCHS)
def test_decode_through_the_cache_equals_prefill(arch, attn_impl):
    """float64: token by token after prompts of 1 and 5 (every temperature from a one-token
    query at its absolute position), chunks of 4, 3, 4, against the golden and the twin's own
    prefill; float32: prefill and decode within the float32 row."""
    config, params, tokens = example(arch)
    ref = impl_numpy.forward(config, params, tokens)
    model = build(config, params, torch.float64, attn_impl)
    with torch.no_grad():
        prefill = numpy64(model(tokens))
        assert_close(prefill, ref, FLOAT64, f"{arch} {attn_impl} prefill")
        for prompt_len in (1, 5):
            decoded = numpy64(model.decode(tokens, prompt_len))
            assert_close(decoded, ref, FLOAT64, f"{arch} {attn_impl} decode after {prompt_len}")
            assert_close(decoded, prefill, FLOAT64, f"{arch} {attn_impl} decode vs prefill")
        cache = model.new_cache(SHAPE[0])
        chunks = [model(chunk, cache=cache) for chunk in np.split(tokens, [4, 7], axis=1)]
        assert_close(numpy64(torch.cat(chunks, dim=1)), ref, FLOAT64, f"{arch} {attn_impl} chunked prefill")
        row = float32_row(config, params, tokens, ref)
        model32 = build(config, params, torch.float32, attn_impl)
        assert_close(numpy64(model32(tokens)), ref, row, f"{arch} {attn_impl} float32 prefill")
        assert_close(numpy64(model32.decode(tokens, 1)), ref, row, f"{arch} {attn_impl} float32 decode")


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_and_gradient_match_the_golden(arch):
    """The loss in float64 and float32 against the golden's; the float64 autograd gradient along
    a random unit direction against central finite differences of the golden loss."""
    config, params, tokens = example(arch)
    ref = impl_numpy.loss(config, params, tokens)
    for dtype, row in [(torch.float64, FLOAT64), (torch.float32, FLOAT32)]:
        got = float(build(config, params, dtype).loss(tokens).detach())
        assert abs(got - ref) <= row.loss_atol + row.loss_rtol * abs(ref), (dtype, got, ref)
    model = build(config, params, torch.float64)
    model.loss(tokens).backward()
    grads = canonical_grads(model, params)
    rng = np.random.default_rng(SEED)
    u = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    norm = np.sqrt(sum((d**2).sum() for d in u.values()))
    u = {k: d / norm for k, d in u.items()}
    autograd = sum(float((grads[k] * u[k]).sum()) for k in params)
    fd = directional_fd(config, params, tokens, u)
    assert abs(autograd - fd) <= 1e-8 + 1e-5 * abs(fd), f"autograd {autograd!r} vs finite differences {fd!r}"


def test_logits_trace_as_one_graph_with_the_temperature_past_the_floor():
    """torch.compile(fullgraph=True) of the tensor-only path (what export wraps): no graph break
    on the positions, prefill and cached steps at positions past the floor."""
    torch._dynamo.reset()
    config, params, tokens = example("llama4-scout")
    model = build(config, params, torch.float32, moe_dispatch="dense")
    tokens = torch.from_numpy(tokens)
    positions = torch.arange(SHAPE[1])[None]  # [1, S]
    compiled = torch.compile(model.logits, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = model.logits(tokens, positions)
        torch.testing.assert_close(compiled(tokens, positions), expected, rtol=0, atol=0)
        cache = model.new_cache(SHAPE[0])
        model.logits(tokens[:, :6], positions[:, :6], cache)
        cache.advance(6)
        cached = compiled(tokens[:, 6:], positions[:, 6:], cache)
    assert_close(numpy64(cached), numpy64(expected[:, 6:]), FLOAT32, "compiled cached logits")
