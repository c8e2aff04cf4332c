"""Presets (spec/presets/): real sizes checked by parameter count and distinguishing facts only
(never allocated, never run), each registered with its source, family and transformers
model_type, `tiny()` keeping every flag, `resolve_archs` selection, the `lmref presets` table."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re

import numpy as np
import pytest

import lmref.spec.presets
from lmref.cli import main
from lmref.impl_numpy.rope import default_inv_freq, inv_freq
from lmref.spec import (
    FAMILIES, PRESETS, REGISTRY, ModelConfig, RopeScaling, get_preset, layer_plan, param_count, param_shapes,
    preset_info, resolve_archs, tiny,
)
from lmref.spec.presets.preset import Preset

# Parameter counts, checked by hand (no weights allocated; param_count sums the shapes):
#
# gpt2: V=50257, d=768, L=12, ctx 1024, d_ff 3072, biases everywhere, tied head.
#   tokens 50257*768 = 38,597,376; positions 1024*768 = 786,432
#   per layer: 2 LayerNorms 2*2*768 = 3,072; wq,wk,wv,wo 4*768^2 = 2,359,296; bq,bk,bv,bo 4*768 = 3,072;
#              w_up, w_down 2*768*3072 = 4,718,592; b_up 3072 + b_down 768 = 3,840  -> 7,087,872
#   12 layers 85,054,464; final LN 1,536; total 38,597,376 + 786,432 + 85,054,464 + 1,536 = 124,439,808
#   (the well-known "124M" of GPT-2 small).
# llama1 / llama2 (7B): V=32000, d=4096, L=32, d_ff 11008, MHA, untied, RMSNorm weights only.
#   tokens + lm_head 2*32000*4096 = 262,144,000
#   per layer: 4*4096^2 = 67,108,864; 3*4096*11008 = 135,266,304; 2 norms 8,192 -> 202,383,360
#   32 layers 6,476,267,520; final norm 4,096; total 6,738,415,616 (Llama-2-7b-hf's 6.74B).
# llama2-70b: d=8192, L=80, 64 heads, 8 KV heads (kv dim 1024), d_ff 28672.
#   tokens + lm_head 2*32000*8192 = 524,288,000
#   per layer: wq, wo 2*8192^2 = 134,217,728; wk, wv 2*8192*1024 = 16,777,216;
#              3*8192*28672 = 704,643,072; norms 16,384 -> 855,654,400
#   80 layers 68,452,352,000; final norm 8,192; total 68,976,648,192.
# llama3 / llama3.1 (8B): V=128256, d=4096, L=32, 8 KV heads (kv dim 1024), d_ff 14336, untied.
#   tokens + lm_head 2*128256*4096 = 1,050,673,152
#   per layer: wq, wo 2*4096^2 = 33,554,432; wk, wv 2*4096*1024 = 8,388,608;
#              3*4096*14336 = 176,160,768; norms 8,192 -> 218,112,000
#   32 layers 6,979,584,000; final norm 4,096; total 8,030,261,248 (Meta-Llama-3-8B's 8.03B).
# olmo (1B): V=50304, d=2048, L=16, d_ff 8192, tied, non-parametric LayerNorm (no norm params).
#   tokens 50304*2048 = 103,022,592; per layer 4*2048^2 + 3*2048*8192 = 16,777,216 + 50,331,648
#   = 67,108,864; 16 layers 1,073,741,824; total 1,176,764,416 (OLMo-1B's 1.18B).
# olmo-alibi: olmo + affine LayerNorms: (2 per layer * 16 + final) = 33 norms * (weight + bias)
#   * 2048 = 135,168; total 1,176,899,584.  RoPE and ALiBi add no parameters.
# mpt (7B): V=50432, d=4096, L=32, d_ff 16384 (4d), tied, no biases, LayerNorm weights only.
#   tokens 50432*4096 = 206,569,472
#   per layer: 4*4096^2 = 67,108,864; 2*4096*16384 = 134,217,728; 2 norms 8,192 -> 201,334,784
#   32 layers 6,442,713,088; final norm 4,096; total 6,649,286,656 (MosaicML's "6.7B").
# mistral-7b (v0.1): V=32000, d=4096, L=32, 8 KV heads (kv dim 1024), d_ff 14336, untied; the
#   sliding window adds no parameters.  tokens + lm_head 2*32000*4096 = 262,144,000; per layer
#   as llama3's 218,112,000; 32 layers 6,979,584,000; final norm 4,096; total 7,241,732,096
#   (Jiang et al. 2023: "7.3B"; the model card's 7.24B).
# mistral-7b-v0.3: V=32768: + 2*768*4096 = 6,291,456 -> 7,248,023,552.
EXPECTED_COUNTS = {
    "gpt2": 124_439_808,
    "llama1": 6_738_415_616,
    "llama2": 6_738_415_616,
    "llama2-70b": 68_976_648_192,
    "llama3": 8_030_261_248,
    "llama3.1": 8_030_261_248,
    "olmo": 1_176_764_416,
    "olmo-alibi": 1_176_764_416 + 33 * 2 * 2048,
    "mpt": 6_649_286_656,
    "mistral-7b": 7_241_732_096,
    "mistral-7b-v0.3": 7_248_023_552,
}


def test_every_preset_has_an_expected_count():
    assert set(EXPECTED_COUNTS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_real_size_parameter_count(name):
    assert param_count(get_preset(name)) == EXPECTED_COUNTS[name]


def test_olmo_alibi_figure():
    assert EXPECTED_COUNTS["olmo-alibi"] == 1_176_899_584


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_name_matches_key(name):
    assert PRESETS[name].name == name


# --- registration: source, family, transformers model_type ----------------------------------

# The transformers model_type holding each preset (None: transformers has no class for it).
EXPECTED_MODEL_TYPES = {
    "gpt2": "gpt2", "llama1": "llama", "llama2": "llama", "llama2-70b": "llama", "llama3": "llama",
    "llama3.1": "llama", "olmo": "olmo", "olmo-alibi": None, "mpt": "mpt",
    "mistral-7b": "mistral", "mistral-7b-v0.3": "mistral",
}
# The family modules of spec/presets/ (every module but the Preset class's own).
FAMILY_MODULES = {m.name: importlib.import_module(f"lmref.spec.presets.{m.name}")
                  for m in pkgutil.iter_modules(lmref.spec.presets.__path__) if m.name != "preset"}


def test_every_preset_has_an_expected_model_type():
    assert set(EXPECTED_MODEL_TYPES) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(EXPECTED_MODEL_TYPES))
def test_hf_model_type(name):
    assert get_preset(name).hf_model_type == EXPECTED_MODEL_TYPES[name]
    assert tiny(name).hf_model_type == EXPECTED_MODEL_TYPES[name]


def test_the_registry_holds_every_family_modules_presets_and_nothing_else():
    registered = {name: preset for module in FAMILY_MODULES.values() for name, preset in module.PRESETS.items()}
    assert registered == REGISTRY
    assert {name: preset.config for name, preset in REGISTRY.items()} == PRESETS


def registration_problems(name: str, preset: Preset) -> list[str]:
    """What is wrong with a registered preset: a family that no module of spec/presets/ is, or
    one whose module does not register it; a source that cites no paper or report (by its
    year) and no published config file."""
    problems = []
    if preset.family not in FAMILY_MODULES:
        problems.append(f"unknown family {preset.family!r}")
    elif name not in FAMILY_MODULES[preset.family].PRESETS:
        problems.append(f"spec/presets/{preset.family}.py does not register {name!r}")
    if not (re.search(r"\b(19|20)\d\d\b", preset.source) or "config.json" in preset.source):
        problems.append(f"source {preset.source!r} cites no paper and no published config")
    return problems


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_preset_cites_its_source_and_belongs_to_its_family(name):
    assert registration_problems(name, preset_info(name)) == []


def test_a_preset_without_a_source_or_with_an_unknown_family_is_caught():
    config = get_preset("gpt2")
    assert registration_problems("gpt2", Preset(config, "", "gpt2")) == [
        "source '' cites no paper and no published config"]
    assert registration_problems("gpt2", Preset(config, "Radford et al. 2019", "gpt3")) == ["unknown family 'gpt3'"]
    assert registration_problems("gpt2", Preset(config, "Radford et al. 2019", "llama")) == [
        "spec/presets/llama.py does not register 'gpt2'"]


# --- distinguishing facts per preset --------------------------------------------------------


def test_gpt2_facts():
    c = get_preset("gpt2")
    assert c.position == "learned"
    assert c.activation == "gelu_tanh" and c.mlp == "plain"
    assert c.tie_embeddings
    assert c.qkv_bias and c.attn_out_bias and c.mlp_bias and c.norm_bias
    assert c.norm == "layernorm" and c.norm_eps == 1e-5
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.max_seq_len) == (50257, 768, 12, 12, 1024)
    shapes = param_shapes(c)
    assert shapes["embed.positions"] == (1024, 768)
    assert "lm_head.weight" not in shapes


def test_llama1_facts():
    c = get_preset("llama1")
    assert c.max_seq_len == 2048
    assert c.norm_eps == 1e-6
    assert c.rope_theta == 10_000.0 and c.rope_scaling is None
    assert c.n_kv_heads == c.n_heads == 32
    assert c.vocab_size == 32000


def test_llama2_facts():
    c = get_preset("llama2")
    assert c.max_seq_len == 4096
    assert c.norm_eps == 1e-5
    # llama1 and llama2 differ only in the context and the eps
    differ = {f.name for f in dataclasses.fields(ModelConfig)
              if getattr(c, f.name) != getattr(get_preset("llama1"), f.name)}
    assert differ == {"name", "max_seq_len", "norm_eps"}


def test_llama2_70b_is_gqa():
    c = get_preset("llama2-70b")
    assert (c.n_heads, c.n_kv_heads, c.d_model, c.n_layers, c.d_ff) == (64, 8, 8192, 80, 28672)


def test_llama3_facts():
    c = get_preset("llama3")
    assert c.rope_theta == 500_000.0
    assert c.n_kv_heads == 8 and c.n_heads == 32
    assert c.vocab_size == 128256
    assert c.max_seq_len == 8192
    assert c.rope_scaling is None


def test_llama31_facts():
    c = get_preset("llama3.1")
    assert c.max_seq_len == 131072
    s = c.rope_scaling
    assert s is not None and s.kind == "llama3"
    assert (s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_seq_len) == (8.0, 1.0, 4.0, 8192)
    # everything else is llama3
    differ = {f.name for f in dataclasses.fields(ModelConfig)
              if getattr(c, f.name) != getattr(get_preset("llama3"), f.name)}
    assert differ == {"name", "max_seq_len", "rope_scaling"}


@pytest.mark.parametrize("name", ["llama1", "llama2", "llama2-70b", "llama3", "llama3.1"])
def test_llama_family_common_facts(name):
    c = get_preset(name)
    assert c.norm == "rmsnorm" and c.norm_weight and not c.norm_bias
    assert c.mlp == "gated" and c.activation == "silu"
    assert c.position == "rope" and c.rope_layout == "halves" and c.rope_fraction == 1.0
    assert not (c.qkv_bias or c.attn_out_bias or c.mlp_bias or c.lm_head_bias or c.tie_embeddings)


def test_olmo_facts():
    c = get_preset("olmo")
    assert c.norm == "layernorm" and not c.norm_weight and not c.norm_bias
    assert c.tie_embeddings
    assert c.position == "rope" and c.rope_theta == 10_000.0
    assert not any("norm" in name for name in param_shapes(c))


def test_olmo_alibi_facts():
    c = get_preset("olmo-alibi")
    assert c.position == "alibi"
    assert c.norm_weight and c.norm_bias
    assert c.tie_embeddings
    differ = {f.name for f in dataclasses.fields(ModelConfig)
              if getattr(c, f.name) != getattr(get_preset("olmo"), f.name)}
    assert differ == {"name", "hf_model_type", "position", "norm_weight", "norm_bias"}
    assert c.hf_model_type is None  # transformers' OLMo has no ALiBi


def test_mpt_facts():
    c = get_preset("mpt")
    assert c.position == "alibi" and c.alibi_max_bias == 8.0
    assert c.norm == "layernorm" and c.norm_weight and not c.norm_bias
    assert c.mlp == "plain" and c.activation == "gelu" and c.d_ff == 4 * c.d_model
    assert not (c.qkv_bias or c.attn_out_bias or c.mlp_bias or c.lm_head_bias)
    assert c.tie_embeddings
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.max_seq_len) == (50432, 4096, 32, 32, 32, 2048)


def test_mistral_v01_facts():
    c = get_preset("mistral-7b")
    assert [layer.mask.window for layer in layer_plan(c)] == [4096] * 32  # the window on every layer
    assert (c.rope_theta, c.vocab_size, c.max_seq_len, c.norm_eps) == (10_000.0, 32000, 32768, 1e-5)
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (32, 8, 128, 14336)


def test_mistral_versions_differ_in_window_theta_and_vocab():
    """Told apart as LLaMA 1/2/3 are: by the numbers that matter."""
    v1, v3 = get_preset("mistral-7b"), get_preset("mistral-7b-v0.3")
    differ = {f.name for f in dataclasses.fields(ModelConfig) if getattr(v1, f.name) != getattr(v3, f.name)}
    assert differ == {"name", "vocab_size", "rope_theta", "attn_pattern", "sliding_window"}
    assert (v3.rope_theta, v3.vocab_size, v3.sliding_window, v3.attn_pattern) == (1e6, 32768, None, ("global",))


@pytest.mark.parametrize("name", ["mistral-7b", "mistral-7b-v0.3"])
def test_mistral_has_no_bias_and_llamas_block(name):
    c = get_preset(name)
    assert c.norm == "rmsnorm" and c.mlp == "gated" and c.activation == "silu" and c.rope_layout == "halves"
    assert not (c.qkv_bias or c.attn_out_bias or c.mlp_bias or c.lm_head_bias or c.tie_embeddings)


def test_tiny_mistral_window_is_shorter_than_every_case():
    assert tiny("mistral-7b").sliding_window == 5 and tiny("mistral-7b").attn_pattern == ("sliding",)


# --- tiny() ---------------------------------------------------------------------------------

SIZE_FIELDS = {"name", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
               "max_seq_len", "rope_scaling", "sliding_window", "attn_chunk_size", "query_scale_dim"}


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
    if base.rope_scaling is None:
        assert small.rope_scaling is None
    else:
        for f in dataclasses.fields(RopeScaling):
            if f.name != "original_max_seq_len":
                assert getattr(small.rope_scaling, f.name) == getattr(base.rope_scaling, f.name), f.name
    for knob in ("sliding_window", "attn_chunk_size", "query_scale_dim"):  # shrunk, never dropped
        assert (getattr(small, knob) is None) == (getattr(base, knob) is None), knob


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tiny_is_small(name):
    base, small = get_preset(name), tiny(name)
    assert small.n_layers == 2 and small.head_dim == 16 and small.vocab_size == 251
    assert small.max_seq_len == min(base.max_seq_len, 1024)
    assert small.d_model == small.n_heads * small.head_dim  # every preset has d_model == q_dim
    assert small.d_ff / small.d_model == pytest.approx(base.d_ff / base.d_model, rel=0.02)
    assert param_count(small) < 1_000_000
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


# --- resolve_archs --------------------------------------------------------------------------


def test_resolve_a_preset():
    assert resolve_archs("llama3") == ["llama3"]  # exact match, not llama3.1 too


def test_resolve_the_llama_family():
    assert resolve_archs("llama") == ["llama1", "llama2", "llama2-70b", "llama3", "llama3.1"]
    assert set(FAMILIES["llama"]) == {n for n in PRESETS if n.startswith("llama")}


def test_resolve_patterns():
    assert resolve_archs("olmo*") == ["olmo", "olmo-alibi"]
    assert resolve_archs("llama3*") == ["llama3", "llama3.1"]


def test_resolve_lists_keep_order_and_drop_repeats():
    assert resolve_archs("gpt2, olmo*,olmo,gpt2") == ["gpt2", "olmo", "olmo-alibi"]
    assert resolve_archs("llama3.1,llama") == ["llama3.1", "llama1", "llama2", "llama2-70b", "llama3"]


@pytest.mark.parametrize("bad", ["mixtral", "llama4*", "gpt2,nope"])
def test_resolve_unknown_names_list_known_ones(bad):
    with pytest.raises(KeyError) as info:
        resolve_archs(bad)
    message = str(info.value)
    assert "unknown arch" in message
    for name in PRESETS:
        assert name in message
    assert "llama" in message.split("families:")[1]


def test_resolve_nothing():
    with pytest.raises(KeyError, match="no arch given"):
        resolve_archs(" , ")


def test_get_preset_unknown_lists_known():
    with pytest.raises(KeyError) as info:
        get_preset("gpt3")
    assert "'gpt3'" in str(info.value)
    assert "llama3.1" in str(info.value) and "olmo-alibi" in str(info.value)


# --- `lmref presets` --------------------------------------------------------------------------


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_presets_table_shows_family_model_type_and_source(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["preset", "family", "model_type", "params"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if not line.startswith(" ")}
    for name, preset in REGISTRY.items():
        model_type = preset.config.hf_model_type or "-"
        assert rows[name][1:4] == [preset.family, model_type, f"{param_count(preset.config):,}"], name
        assert f"source: {_words(preset.source)}" in _words(out), name
    assert rows["olmo-alibi"][2] == "-"


def test_the_presets_table_of_a_selection(capsys):
    assert main(["presets", "--arch", "olmo*"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert rows == ["preset", "olmo", "olmo-alibi"]
    assert _words(preset_info("olmo").source) in _words(out) and "Radford" not in out
