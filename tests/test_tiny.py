"""`tiny()` (spec/presets/__init__.py): the small model of a preset keeps every flag, each
knob that acts only at some size (a sliding window, a RoPE scaling's original context) still
acting, its attention kind, and stays small.  Real sizes: tests/test_presets.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lmref.impl_numpy.rope import default_inv_freq, inv_freq
from lmref.spec import (PRESETS, ModelConfig, MoEConfig, RopeScaling, VisionConfig, get_preset, layer_plan,
                        param_count, tiny)

SIZE_FIELDS = {"name", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
               "max_seq_len", "rope_scaling", "sliding_window", "attn_chunk_size", "query_scale_dim", "qkv_clip",
               "moe", "attn_temperature_floor", "logit_scale", "vision"}


def _attention_kind(c: ModelConfig) -> str:
    if c.n_kv_heads == c.n_heads:
        return "MHA"
    return "MQA" if c.n_kv_heads == 1 else "GQA"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tiny_keeps_every_flag(name):
    base, small = get_preset(name), tiny(name)
    for f in dataclasses.fields(ModelConfig):
        if f.name not in SIZE_FIELDS:
            assert getattr(small, f.name) == getattr(base, f.name), f.name
    if base.logit_scale == 1.0:
        assert small.logit_scale == 1.0
    else:  # it keeps its product with sqrt(d_model): PaLM's d_model^-0.5 stays its own d_model's
        assert small.logit_scale == pytest.approx(base.logit_scale * (base.d_model / small.d_model) ** 0.5, rel=1e-12)
    if base.rope_scaling is None:
        assert small.rope_scaling is None
    else:
        for f in dataclasses.fields(RopeScaling):
            if f.name not in ("original_max_seq_len", "short_factor", "long_factor"):
                assert getattr(small.rope_scaling, f.name) == getattr(base.rope_scaling, f.name), f.name
        for name in ("short_factor", "long_factor"):  # LongRoPE: one per rotated pair, the ends kept
            factors, kept = getattr(base.rope_scaling, name), getattr(small.rope_scaling, name)
            assert (factors is None) == (kept is None), name
            if factors is not None:
                assert len(kept) == small.rope_dim // 2 and set(kept) <= set(factors), name
                assert (kept[0], kept[-1]) == (factors[0], factors[-1]), name
    for knob in ("sliding_window", "attn_chunk_size", "query_scale_dim", "qkv_clip",
                 "attn_temperature_floor"):  # shrunk, never dropped
        assert (getattr(small, knob) is None) == (getattr(base, knob) is None), knob
    if base.moe is not None:  # the experts' widths shrink; every other MoE field is kept
        for f in dataclasses.fields(MoEConfig):
            if f.name not in ("d_ff", "shared_d_ff"):
                assert getattr(small.moe, f.name) == getattr(base.moe, f.name), f.name
    assert (small.vision is None) == (base.vision is None)
    if base.vision is not None:  # the tower shrinks; its flags are kept, the placeholder moves into the vocab
        sizes = ("image_size", "patch_size", "d_model", "n_layers", "n_heads", "d_ff", "image_token_id")
        for f in dataclasses.fields(VisionConfig):
            if f.name not in sizes:
                assert getattr(small.vision, f.name) == getattr(base.vision, f.name), f.name
        assert small.vision.layers_run < small.vision.n_layers  # a layer after the feature layer, as at full size


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tiny_is_small(name):
    base, small = get_preset(name), tiny(name)
    # two layers, or one period of the layer pattern (Gemma 3: five sliding, one global)
    assert small.n_layers == max(2, len(base.attn_pattern)) and small.head_dim == 16 and small.vocab_size == 251
    assert small.max_seq_len == min(base.max_seq_len, 1024)
    assert small.d_model / small.q_dim == pytest.approx(base.d_model / base.q_dim, rel=0.02)
    assert small.d_ff / small.d_model == pytest.approx(base.d_ff / base.d_model, rel=0.02)
    assert small.expert_d_ff / small.d_model == pytest.approx(base.expert_d_ff / base.d_model, rel=0.05)
    assert small.shared_expert_d_ff / small.d_model == pytest.approx(base.shared_expert_d_ff / base.d_model, rel=0.05)
    # a MoE keeps its published expert count: up to 128 experts of the tiny width (Maverick:
    # 128 experts of width 205 in each of its two MoE layers, 21M)
    assert param_count(small) < (25_000_000 if base.moe else 1_000_000)
    assert small.name == f"{name}-tiny"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tiny_keeps_the_attention_kind(name):
    base, small = get_preset(name), tiny(name)
    assert _attention_kind(small) == _attention_kind(base)


def test_tiny_keeps_mqa_and_caps_gqa_group():
    mqa = dataclasses.replace(get_preset("llama2"), name="mqa", n_kv_heads=1)
    assert _attention_kind(tiny(mqa)) == "MQA"
    small70 = tiny("llama2-70b")  # group of 8 at full size
    assert small70.n_kv_heads > 1 and small70.kv_group_size == 4


def test_tiny_overrides():
    c = tiny("llama3", n_layers=3, max_seq_len=64)
    assert (c.n_layers, c.max_seq_len, c.head_dim) == (3, 64, 16)


def test_tiny_shrinks_llama3_original_context_by_the_same_factor():
    s = tiny("llama3.1").rope_scaling
    assert s.original_max_seq_len == 8192 * 1024 // 131072 == 64


def test_tiny_llama31_scaling_still_has_all_three_bands():
    c = tiny("llama3.1")
    plain = default_inv_freq(c.rope_theta, c.rope_dim)
    scaled = inv_freq(layer_plan(c)[0].rope)  # every layer of llama3.1 is global, with the scaling
    unchanged = np.isclose(scaled, plain, rtol=1e-12, atol=0)
    divided = np.isclose(scaled, plain / c.rope_scaling.factor, rtol=1e-12, atol=0)
    smoothed = ~unchanged & ~divided
    assert unchanged.sum() >= 1
    assert divided.sum() >= 1
    assert smoothed.sum() >= 1
    # smoothed frequencies lie strictly between the divided and the unchanged value
    assert np.all(scaled[smoothed] < plain[smoothed])
    assert np.all(scaled[smoothed] > plain[smoothed] / c.rope_scaling.factor)
    # bands are ordered: high frequencies (small i) unchanged, low frequencies divided
    kinds = np.where(unchanged, 0, np.where(smoothed, 1, 2))
    assert np.all(np.diff(kinds) >= 0)
