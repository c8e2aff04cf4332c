"""Presets (spec/presets/): real sizes checked by parameter count and distinguishing facts only
(never allocated, never run), each registered with its source, family and transformers
model_type, `resolve_archs` selection, the `lmref presets` table.  `tiny()`: tests/test_tiny.py."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import lmref.spec.presets
from lmref.cli import main
from lmref.spec import FAMILIES, PRESETS, REGISTRY, get_preset, param_count, preset_info, resolve_archs, tiny
from lmref.spec.presets.preset import Preset
from lmref.spec.params import active_param_count

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
# qwen2-7b / qwen2.5-7b: V=152064, d=3584, L=28, 28 heads x 128, 4 KV heads (kv dim 512), d_ff 18944,
#   q, k, v biases, untied.  tokens + lm_head 2*152064*3584 = 1,089,994,752
#   per layer: wq, wo 2*3584^2 = 25,690,112; wk, wv 2*3584*512 = 3,670,016; bq 3584 + bk, bv 2*512 = 4,608;
#              3*3584*18944 = 203,685,888; norms 7,168 -> 233,057,792
#   28 layers 6,525,618,176; final norm 3,584; total 7,615,616,512 (the checkpoints' 7.62B; Qwen2.5's
#   report: 7.61B).
# qwen3-8b: V=151936, d=4096, L=36, 32 heads x 128, 8 KV heads (kv dim 1024), d_ff 12288, untied, no biases.
#   tokens + lm_head 2*151936*4096 = 1,244,659,712
#   per layer: wq, wo 2*4096^2 = 33,554,432; wk, wv 2*4096*1024 = 8,388,608; 3*4096*12288 = 150,994,944;
#              norms 8,192; q_norm, k_norm 2*128 = 256 -> 192,946,432
#   36 layers 6,946,071,552; final norm 4,096; total 8,190,735,360 (the model card's 8.2B).
# Gemma: the head is tied, so the 256000-token (262208 for Gemma 3) embedding counts once; norms
#   store the w of (1 + w), one vector each like any RMSNorm.
# gemma-2b: d=2048, L=18, 8 heads x 256 (q dim 2048), 1 KV head (kv dim 256), d_ff 16384.
#   tokens 256000*2048 = 524,288,000
#   per layer: wq, wo 2*2048^2 = 8,388,608; wk, wv 2*2048*256 = 1,048,576; 3*2048*16384 = 100,663,296;
#              norms 4,096 -> 110,104,576
#   18 layers 1,981,882,368; final norm 2,048; total 2,506,172,416 (the checkpoint's 2.51B).
# gemma-7b: d=3072, L=28, 16 heads x 256 (q dim 4096, not d), MHA, d_ff 24576.
#   tokens 256000*3072 = 786,432,000
#   per layer: wq, wk, wv, wo 4*3072*4096 = 50,331,648; 3*3072*24576 = 226,492,416; norms 6,144
#              -> 276,830,208
#   28 layers 7,751,245,824; final norm 3,072; total 8,537,680,896 (the checkpoint's 8.54B).
# gemma2-9b: d=3584, L=42, 16 heads x 256 (q dim 4096), 8 KV heads (kv dim 2048), d_ff 14336, 4 norms.
#   tokens 256000*3584 = 917,504,000
#   per layer: wq, wo 2*3584*4096 = 29,360,128; wk, wv 2*3584*2048 = 14,680,064;
#              3*3584*14336 = 154,140,672; norms 4*3584 = 14,336 -> 198,195,200
#   42 layers 8,324,198,400; final norm 3,584; total 9,241,705,984 (the checkpoint's 9.24B).
# gemma2-27b: d=4608, L=46, 32 heads x 128 (q dim 4096), 16 KV heads (kv dim 2048), d_ff 36864, 4 norms.
#   tokens 256000*4608 = 1,179,648,000
#   per layer: wq, wo 2*4608*4096 = 37,748,736; wk, wv 2*4608*2048 = 18,874,368;
#              3*4608*36864 = 509,607,936; norms 4*4608 = 18,432 -> 566,249,472
#   46 layers 26,047,475,712; final norm 4,608; total 27,227,128,320 (the checkpoint's 27.2B).
# gemma3-4b (text model): V=262208, d=2560, L=34, 8 heads x 256 (q dim 2048), 4 KV heads (kv dim 1024),
#   d_ff 10240, 4 norms, q_norm and k_norm [256].  tokens 262208*2560 = 671,252,480
#   per layer: wq, wo 2*2560*2048 = 10,485,760; wk, wv 2*2560*1024 = 5,242,880; 3*2560*10240 = 78,643,200;
#              norms 4*2560 = 10,240; q_norm, k_norm 512 -> 94,382,592
#   34 layers 3,209,008,128; final norm 2,560; total 3,880,263,168 (Gemma 3 report, Table 1: 3,209M
#   non-embedding parameters; the 417M vision encoder is not part of the text model).
# gemma3-27b (text model): V=262208, d=5376, L=62, 32 heads x 128 (q dim 4096), 16 KV heads (kv dim 2048),
#   d_ff 21504, 4 norms, q_norm and k_norm [128].  tokens 262208*5376 = 1,409,630,208
#   per layer: wq, wo 2*5376*4096 = 44,040,192; wk, wv 2*5376*2048 = 22,020,096; 3*5376*21504 = 346,816,512;
#              norms 4*5376 = 21,504; q_norm, k_norm 256 -> 412,898,560
#   62 layers 25,599,710,720; final norm 5,376; total 27,009,346,304 (Gemma 3 report, Table 1: 25,600M
#   non-embedding parameters).
# olmo2-7b: V=100352, d=4096, L=32, MHA, d_ff 11008, untied, 2 post norms, q_norm, k_norm [4096] each.
#   tokens + lm_head 2*100352*4096 = 822,083,584
#   per layer: 4*4096^2 = 67,108,864; 3*4096*11008 = 135,266,304; post norms 8,192; q_norm, k_norm 8,192
#              -> 202,391,552
#   32 layers 6,476,529,664; final norm 4,096; total 7,298,617,344 (the checkpoint's 7.3B).
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
    "qwen2-7b": 7_615_616_512,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-8b": 8_190_735_360,
    "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
    "gemma3-4b": 3_880_263_168,
    "gemma3-27b": 27_009_346_304,
    "olmo2-7b": 7_298_617_344,
    # Mixtures of experts: the published totals (Mixtral 46.7B / 141B, DBRX 132B, Qwen1.5-MoE
    # 14.3B, Qwen2-57B-A14B 57B, Qwen3-30B-A3B 30.5B, OLMoE 6.9B), e.g. Mixtral 8x7B:
    #   tokens + lm_head 2*32000*4096 = 262,144,000
    #   per layer: q, o 2*4096^2; k, v 2*4096*1024 -> 41,943,040; router 4096*8 = 32,768;
    #              8 experts 8*3*4096*14336 = 1,409,286,144; norms 8,192 -> 1,451,270,144
    #   32 layers 46,440,644,608; final norm 4,096; total 46,702,792,704
    "mixtral-8x7b": 46_702_792_704,
    "mixtral-8x22b": 140_620_634_112,
    "dbrx": 131_596_523_520,
    "qwen1.5-moe-a2.7b": 14_315_784_192,
    "qwen2-57b-a14b": 57_408_658_944,
    "qwen3-30b-a3b": 30_532_122_624,
    "olmoe-1b-7b": 6_919_161_856,
    # Llama 4, the text model (Meta's 109B for Scout counts its vision encoder too):
    #   tokens + lm_head 2*202048*5120 = 2,068,971,520
    #   per layer: q, o 2*5120^2; k, v 2*5120*1024 -> 62,914,560; router 5120*16 = 81,920;
    #              16 experts 16*3*5120*8192 = 2,013,265,920; shared 3*5120*8192 = 125,829,120;
    #              norms 10,240 -> 2,202,101,760
    #   48 layers 105,700,884,480; final norm 5,120; total 107,769,861,120
    "llama4-scout": 107_769_861_120,
    "llama4-maverick": 400_711_848_960,
    # Pythia and GPT-NeoX-20B: exactly the published totals (Biderman et al. 2023, Table 1;
    # Black et al. 2022).  pythia-160m: tokens + head 2*50304*768 = 77,266,944; per layer
    #   qkv 768*2304 + 2304, dense 768^2 + 768, MLP 2*768*3072 + 3072 + 768, 2 LNs 4*768 -> 7,087,872;
    #   12 layers 85,054,464 (the table's 85,056,000 non-embedding adds the final LN 1,536).
    "pythia-160m": 162_322_944,
    "pythia-1.4b": 1_414_647_808,
    "pythia-6.9b": 6_857_302_016,
    "gpt-neox-20b": 20_554_567_680,
    # GPT-J-6B: the checkpoint's tensors, which transformers' GPTJForCausalLM counts too.  The
    # model card's 6,053,381,344 is 2,498,560 (610 x 4096) more, which no tensor of the
    # checkpoint accounts for: tokens 50400*4096, head 4096*50400 + 50400; per layer q, k, v, o
    # 4*4096^2, MLP 2*4096*16384 + 16384 + 4096, ln_1 2*4096 -> 201,379,840; ln_f 8,192.
    "gptj-6b": 6_050_882_784,
    # Phi and Falcon: the checkpoints' tensors, which transformers' PhiForCausalLM and
    # FalconForCausalLM count too (the published 1.3B, 2.7B, 7B, 40B).  phi-1.5: tokens 51200*2048,
    # head 2048*51200 + 51200; per layer q, k, v, dense 4*(2048^2 + 2048), fc1, fc2
    # 2*2048*8192 + 8192 + 2048, one LN 4096 -> 50,354,176; final LN 4096.
    "phi-1.5": 1_418_270_720,
    "phi-2": 2_779_683_840,
    "falcon-7b": 6_921_720_704,
    "falcon-40b": 41_303_293_952,
    # BLOOM: exactly the model cards' totals, which are the checkpoints' tensors.  bloom-560m:
    #   tokens 250880*1024 = 256,901,120 (tied head); embedding LayerNorm 2*1024
    #   per layer: query_key_value 1024*3072 + 3072, dense 1024^2 + 1024, MLP 2*1024*4096 + 4096 + 1024,
    #              2 LNs 4*1024 -> 12,596,224; 24 layers 302,309,376; ln_f 2*1024; total 559,214,592
    "bloom-560m": 559_214_592,
    "bloom-7b1": 7_069_016_064,
    "bloom-176b": 176_247_271_424,
    # Phi-3-mini (keras-hub's phi3 presets: 3,821,079,552): tokens and head 2 * 32064 * 3072; per
    # layer qkv 3 * 3072^2, o 3072^2, gate_up 2 * 3072 * 8192, down 8192 * 3072, two norms 2 * 3072
    # -> 113,252,352; final norm 3072.  The 128k model adds only LongRoPE's factors, no tensors.
    "phi-3-mini-4k": 3_821_079_552,
    "phi-3-mini-128k": 3_821_079_552,
    # PaLM (Chowdhery et al. 2022, Table 1: 8.63B, 62.50B, 540.35B): the tied table counted once,
    # one LayerNorm scale per layer and a final one, no biases.  palm-8b: tokens 256000*4096;
    # per layer q, o 2*4096*(16*256), k, v 2*4096*256 (multi-query), SwiGLU 3*4096*16384, one
    # LayerNorm 4096 -> 236,982,272; final LayerNorm 4096.  The 540B count rounds to 540.36B;
    # Table 1's 540.35B is it without the 119 LayerNorm scales (test_preset_facts.py).
    "palm-8b": 8_632_012_800,
    "palm-62b": 62_495_662_080,
    "palm-540b": 540_356_474_880,
    # LLaVA-1.5 (transformers' LlavaForConditionalGeneration of llava-hf/llava-1.5-7b-hf counts
    # 7,063,427,072): Llama 2 7B with 32064 rows 6,738,939,904 (untied); CLIP ViT-L/14-336
    # 303,507,456 (patch conv 1024*3*14*14, class 1024, positions 577*1024, pre and post
    # LayerNorms 2*2*1024, 24 layers of 12,596,224); projector 1024*4096 + 4096*4096 + 2*4096.
    # The 13b's card says 13.4B: Vicuna-13B's 13,027,007,488 + the same tower and a 5120-wide projector.
    "llava-1.5-7b": 7_063_427_072,
    "llava-1.5-13b": 13_351_494_656,
}

# Parameters one token runs through (the published "active" figures: Mixtral 12.9B / 39B,
# DBRX 36B, Qwen1.5-MoE 2.7B, Qwen2-57B-A14B 14B, Qwen3-30B-A3B 3.3B, OLMoE 1.3B): the total
# less the routed experts not chosen, e.g. Mixtral 8x7B: 46,702,792,704 - 32 * 6 * 176,160,768.
EXPECTED_ACTIVE_COUNTS = {
    "mixtral-8x7b": 12_879_925_248,
    "mixtral-8x22b": 39_152_031_744,
    "dbrx": 36_469_708_800,
    "qwen1.5-moe-a2.7b": 2_689_173_504,
    "qwen2-57b-a14b": 14_249_270_784,
    "qwen3-30b-a3b": 3_353_032_704,
    "olmoe-1b-7b": 1_282_017_280,
    "llama4-scout": 17_172_894_720,  # Meta: 17B active
    "llama4-maverick": 17_184_691_200,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_ACTIVE_COUNTS))
def test_real_size_active_parameter_count(name):
    assert active_param_count(get_preset(name)) == EXPECTED_ACTIVE_COUNTS[name]
    c = get_preset(name)
    moe_layers = sum(kind == "moe" for kind in c.layer_mlp_kinds)
    assert EXPECTED_COUNTS[name] - active_param_count(c) == (
        moe_layers * (c.moe.n_experts - c.moe.n_experts_per_token) * 3 * c.d_model * c.expert_d_ff)


def test_a_dense_model_runs_through_every_parameter():
    assert active_param_count(get_preset("llama3")) == EXPECTED_COUNTS["llama3"]


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
    "qwen2-7b": "qwen2", "qwen2.5-7b": "qwen2", "qwen3-8b": "qwen3", "olmo2-7b": "olmo2",
    "gemma-2b": "gemma", "gemma-7b": "gemma", "gemma2-9b": "gemma2", "gemma2-27b": "gemma2",
    "gemma3-4b": "gemma3_text", "gemma3-27b": "gemma3_text",
    "mixtral-8x7b": "mixtral", "mixtral-8x22b": "mixtral", "dbrx": "dbrx",
    "qwen1.5-moe-a2.7b": "qwen2_moe", "qwen2-57b-a14b": "qwen2_moe", "qwen3-30b-a3b": "qwen3_moe",
    "olmoe-1b-7b": "olmoe", "llama4-scout": "llama4_text", "llama4-maverick": "llama4_text",
    "pythia-160m": "gpt_neox", "pythia-1.4b": "gpt_neox", "pythia-6.9b": "gpt_neox", "gpt-neox-20b": "gpt_neox",
    "gptj-6b": "gptj", "phi-1.5": "phi", "phi-2": "phi", "falcon-7b": "falcon", "falcon-40b": "falcon",
    "bloom-560m": "bloom", "bloom-7b1": "bloom", "bloom-176b": "bloom",
    "phi-3-mini-4k": "phi3", "phi-3-mini-128k": "phi3",
    "palm-8b": None, "palm-62b": None, "palm-540b": None,
    "llava-1.5-7b": "llava", "llava-1.5-13b": "llava",
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


# --- resolve_archs --------------------------------------------------------------------------


def test_resolve_a_preset():
    assert resolve_archs("llama3") == ["llama3"]  # exact match, not llama3.1 too


def test_resolve_the_llama_family():
    assert resolve_archs("llama") == ["llama1", "llama2", "llama2-70b", "llama3", "llama3.1"]
    assert set(FAMILIES["llama"]) == {n for n in PRESETS if n.startswith("llama") and not n.startswith("llama4")}


def test_resolve_patterns():
    assert resolve_archs("olmo*") == ["olmo", "olmo-alibi", "olmo2-7b", "olmoe-1b-7b"]
    assert resolve_archs("mixtral") == ["mixtral-8x7b", "mixtral-8x22b"]
    assert resolve_archs("llama3*") == ["llama3", "llama3.1"]


def test_resolve_lists_keep_order_and_drop_repeats():
    assert resolve_archs("gpt2, olmo*,olmo,gpt2") == ["gpt2", "olmo", "olmo-alibi", "olmo2-7b", "olmoe-1b-7b"]
    assert resolve_archs("llama3.1,llama") == ["llama3.1", "llama1", "llama2", "llama2-70b", "llama3"]


@pytest.mark.parametrize("bad", ["mixtral-8x9b", "llama9*", "gpt2,nope"])
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
    assert rows == ["preset", "olmo", "olmo-alibi", "olmo2-7b", "olmoe-1b-7b"]
    assert _words(preset_info("olmo").source) in _words(out) and "Radford" not in out
