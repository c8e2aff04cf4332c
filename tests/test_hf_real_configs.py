"""Published config.json files against the converters (needs torch and transformers; nothing
is downloaded or allocated).

tests/hf_real_configs/ holds the config.json of released checkpoints, written from the
files on the Hugging Face Hub with their own keys and values (legacy ones included: Gemma's
hidden_act "gelu", Gemma 2's sliding_window_size, Qwen2.5's use_mrope; the mixtures' files,
Mixtral to OLMoE, were written from memory of the Hub's, not fetched); a file is named after
its repository, "/" as "--", and gemma-3-4b-pt's and gemma-3-27b-pt's are their text_config,
which holds the text model (27B's written from memory of the Hub's, no Hub access).  lmref
reads each as the preset it is the source of; transformers builds each (on the meta device)
with exactly the tensors, shapes and parameter count lmref's converter maps (under the names
`save_pretrained` writes: the Hub's, one tensor per expert for the mixtures that 5.x fuses in
memory); and the config.json lmref writes for a preset reads in transformers
as the published one (DBRX's excepted: transformers 5.23 reads the Hub's file with RoPE theta
10000, test_dbrx_hub_config_runs_theta_10000_in_transformers_5).

Llama 4's files are the `text_config` of meta-llama/Llama-4-Scout-17B-16E and
Llama-4-Maverick-17B-128E (Llama4ForConditionalGeneration; the text model is
Llama4ForCausalLM), written from memory of the Hub's (no Hub access), with its 4.51-era keys:
`no_rope_layers: []` (4.x and 5.x then derive every fourth layer NoPE), `for_llm_compressor`,
`cache_implementation`, and `attn_temperature_tuning: 4`, which transformers 5.23 refuses
(its config takes a bool), so it is given True there (`for_transformers5`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmref.convert import config_from_hf  # noqa: E402
from lmref.convert.hf import auto_class_name, hf_config, hf_key, module_for  # noqa: E402
from lmref.convert.layout import expected_shapes  # noqa: E402
from lmref.convert.moe import transformers_objective  # noqa: E402
from lmref.spec import get_preset, layer_plan, param_count, param_shapes  # noqa: E402
from transformers.core_model_loading import revert_weight_conversion  # noqa: E402

DIRECTORY = Path(__file__).parent / "hf_real_configs"
# file -> the preset whose source it is (None: a checkpoint no preset holds)
REAL = {
    "Qwen--Qwen2-7B": "qwen2-7b", "Qwen--Qwen2.5-7B": "qwen2.5-7b", "Qwen--Qwen3-8B": "qwen3-8b",
    "google--gemma-2b": "gemma-2b", "google--gemma-7b": "gemma-7b",
    "google--gemma-2-9b": "gemma2-9b", "google--gemma-2-27b": "gemma2-27b",
    "google--gemma-3-4b-pt.text_config": "gemma3-4b", "google--gemma-3-1b-pt": None,
    "google--gemma-3-27b-pt.text_config": "gemma3-27b",
    "allenai--OLMo-2-1124-7B": "olmo2-7b",
    "mistralai--Mixtral-8x7B-v0.1": "mixtral-8x7b", "mistralai--Mixtral-8x22B-v0.1": "mixtral-8x22b",
    "databricks--dbrx-base": "dbrx", "Qwen--Qwen1.5-MoE-A2.7B": "qwen1.5-moe-a2.7b",
    "Qwen--Qwen2-57B-A14B": "qwen2-57b-a14b", "Qwen--Qwen3-30B-A3B": "qwen3-30b-a3b",
    "allenai--OLMoE-1B-7B-0924": "olmoe-1b-7b",
    "meta-llama--Llama-4-Scout-17B-16E.text_config": "llama4-scout",
    "meta-llama--Llama-4-Maverick-17B-128E.text_config": "llama4-maverick",
    # GPT-NeoX's files, written from memory of the Hub's (no Hub access).  gpt-neox-20b's
    # hidden_act is gelu_fast, the tanh GELU (read as gelu_tanh), as in its preset
    # (tests/test_hf_gpt_neox.py): no preset until they agree
    "EleutherAI--pythia-160m": "pythia-160m", "EleutherAI--gpt-neox-20b": "gpt-neox-20b",
    "EleutherAI--gpt-j-6b": "gptj-6b",
    # Phi's files, written from memory of the Hub's (no Hub access), as 4.37 converted them
    "microsoft--phi-1_5": "phi-1.5", "microsoft--phi-2": "phi-2",
    # Falcon's files, written from memory of the Hub's (no Hub access): model_type "falcon",
    # as tiiuae re-saved them for transformers' class (the RW keys n_head, n_layer, n_head_kv gone)
    "tiiuae--falcon-7b": "falcon-7b", "tiiuae--falcon-40b": "falcon-40b",
    # BLOOM's files, written from memory of the Hub's (no Hub access), without the weights' prefix:
    # bloom-560m and bloom-7b1 with hidden_size / n_head, bigscience/bloom (176B) with the older
    # n_embed / num_attention_heads and pretraining_tp 4
    "bigscience--bloom-560m": "bloom-560m", "bigscience--bloom-7b1": "bloom-7b1", "bigscience--bloom": "bloom-176b",
    # Phi-3-mini's files (no Hub access): the 4k one as a repository vendoring it quotes it; the
    # 128k one from the Hub page's head (to the first 31 long factors) and Microsoft's quoted
    # factor lists (spec/presets/phi3.py), its other keys spelled as the 4k file's
    "microsoft--Phi-3-mini-4k-instruct": "phi-3-mini-4k", "microsoft--Phi-3-mini-128k-instruct": "phi-3-mini-128k",
    # LLaVA 1.5's file (no Hub access) as repositories that vendor it quote it (the 4.36.0.dev0
    # conversion's keys: a top-level vocab_size and ignore_index, CLIP's projection_dim and a
    # stray vocab_size in vision_config)
    "llava-hf--llava-1.5-7b-hf": "llava-1.5-7b",
}
WITH_PRESET = sorted(name for name, preset in REAL.items() if preset)
# Keys that never change the numbers, or that only one of two equivalent files spells out.
NOT_NUMERIC = {
    # Falcon's RW-era flag, never read by transformers (false on the Hub; convert/models/falcon.py)
    "apply_residual_connection_post_layernorm",
    "resid_pdrop",  # phi-2's training dropout (0.1), off in eval (convert/models/phi.py IGNORED)
    # gpt-neox-20b's dropouts under names GPTNeoXConfig never reads (convert/models/gpt_neox.py IGNORED)
    "attention_probs_dropout_prob", "hidden_dropout_prob",
    # gpt-j-6b's legacy keys, kept by GPTJConfig as attributes GPTJForCausalLM never reads
    # (convert/models/gptj.py: rotary and scale_attn_weights must be true, the rest is ignored)
    "rotary", "scale_attn_weights", "gradient_checkpointing", "summary_type", "summary_use_proj",
    "summary_activation", "summary_proj_to_labels", "summary_first_dropout", "task_specific_params", "tokenizer_class",
    "_name_or_path", "transformers_version", "architectures", "lmref_name", "dtype", "torch_dtype", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "output_attentions", "output_hidden_states",
    # kept by transformers as attributes it never reads (see each type's IGNORED in convert/models/)
    "use_mrope", "hidden_act", "sliding_window_size", "cache_implementation",
    # Qwen's max_window_layers only derives layer_types (compared) in 5.x, and Qwen3-MoE never reads it
    "max_window_layers",
    "model_type",  # DBRX's sub-configs say "" (their class's base_config_key names them)
    "auto_map",  # DBRX's pointers to Databricks' remote code, which transformers' own class replaces
    "moe_jitter_eps",  # DBRX's router jitter, applied in training only
    "for_llm_compressor",  # Llama 4's 4.51-era flag, read by neither 4.57 nor 5.23 (false on the Hub)
    # lmref's keys for its authors' objectives (convert/moe.py), which transformers never reads
    "lmref_moe_aux_loss", "lmref_moe_router_z_loss_coef",
    # BLOOM's Megatron-DeepSpeed keys, which transformers keeps and never reads (convert/models/bloom.py
    # IGNORED), its n_inner (the MLP is 4 d whatever it says), lmref's seq_length (BloomConfig holds
    # no context), and pretraining_tp, which only acts with slow_but_exact (false in every file)
    "masked_softmax_fusion", "attention_softmax_in_fp32", "bias_dropout_fusion", "skip_bias_add", "skip_bias_add_qkv",
    "offset_alibi", "unk_token_id", "n_inner", "seq_length", "pretraining_tp",
}


def published(name: str) -> dict:
    return json.loads((DIRECTORY / f"{name}.json").read_text())


def for_transformers5(data: dict) -> dict:
    """`data` as transformers 5.23 takes it: Llama 4's integer attn_temperature_tuning (the
    Hub's 4, which 4.x ran as true) as a bool."""
    tuning = data.get("attn_temperature_tuning")
    return data | ({"attn_temperature_tuning": bool(tuning)} if isinstance(tuning, int) else {})


def test_every_file_is_listed():
    assert sorted(path.stem for path in DIRECTORY.glob("*.json")) == sorted(REAL)


@pytest.mark.parametrize("name", WITH_PRESET)
def test_the_published_config_is_the_preset(name):
    """Up to the training objective: a Hub file holds transformers' `labels=` loss, where the
    DBRX and OLMoE presets hold their authors' (convert/moe.py `transformers_objective`)."""
    preset = get_preset(REAL[name])
    expected = transformers_objective(preset) if preset.moe is not None else preset
    assert config_from_hf(published(name), "read") == dataclasses.replace(expected, name="read")


@pytest.mark.parametrize("name", sorted(REAL))
def test_transformers_builds_the_tensors_lmref_maps(name):
    data = published(name)
    config = config_from_hf(data, name)
    with torch.device("meta"):
        hf = transformers.AutoConfig.for_model(**for_transformers5(data))
        model = getattr(transformers, auto_class_name(data["model_type"])).from_config(hf)
    # a tied head is listed once; 5.x's fused experts are split back as save_pretrained does; a
    # name lmref reads as another (a fresh llava's `vision_tower.*`, `hf_key`) counts as that one
    module = module_for(config)
    expected = expected_shapes(module.entries(config), param_shapes(config))
    saved = revert_weight_conversion(model, dict(model.named_parameters()))
    built = {hf_key(module, key, set(expected)): tuple(p.shape) for key, p in saved.items()}
    assert built == expected
    assert sum(math.prod(shape) for shape in built.values()) == param_count(config)


# Keys one type keeps but never reads ("a.b": key b of sub-config a): Phi-3-mini-4k's
# `attention_bias` (Phi3Attention's projections are bias=False whatever it says; a numeric key
# for llama-style types); llava-hf's 4.36-era top-level vocab_size (text_config's, which lmref
# checks it equals) and ignore_index (4.x's label index), and its vision_config's projection_dim
# (CLIPVisionModelWithProjection's head) and vocab_size (CLIP's tower has no vocabulary)
NOT_NUMERIC_BY_TYPE = {"phi3": {"attention_bias"},
                       "llava": {"vocab_size", "ignore_index", "vision_config.projection_dim",
                                 "vision_config.vocab_size"}}


def _numeric(data: dict) -> dict:
    """The config as transformers reads it, minus NOT_NUMERIC (in DBRX's sub-configs too)."""
    read = transformers.AutoConfig.for_model(**for_transformers5(data)).to_dict()
    for key in NOT_NUMERIC_BY_TYPE.get(data.get("model_type"), set()):
        *sub, last = key.split(".")
        (read[sub[0]] if sub else read).pop(last, None)
    if (read.get("sliding_window") or 0) >= read.get("max_position_embeddings", float("inf")):
        # a window that never cuts inside the context (Phi-3-mini-128k's 262144): lmref reads it as
        # none and writes null, the same causal mask (tests/test_hf_phi3.py)
        read["sliding_window"] = None
    return _without_not_numeric(read)


def _without_not_numeric(data: dict) -> dict:
    return {key: _without_not_numeric(value) if isinstance(value, dict) else value
            for key, value in data.items() if key not in NOT_NUMERIC}


@pytest.mark.parametrize("name", sorted(set(WITH_PRESET) - {"databricks--dbrx-base"}))
def test_lmrefs_config_json_reads_in_transformers_as_the_published_one(name):
    assert _numeric(hf_config(get_preset(REAL[name]))) == _numeric(published(name))


def test_dbrx_hub_config_runs_theta_10000_in_transformers_5():
    """databricks/dbrx-base gives its theta as attn_config.rope_theta (5e5), which Databricks'
    code and transformers 4.x rotate with; 5.23's DbrxRotaryEmbedding reads rope_parameters,
    absent there, so 10000.  lmref reads 5e5 and writes both: transformers 5.23 reads lmref's
    file as the Hub's but for that theta (and the Hub's copy of moe_loss_weight in
    router_aux_loss_coef, which DbrxForCausalLM never reads)."""
    ours, hub = _numeric(hf_config(get_preset("dbrx"))), _numeric(published("databricks--dbrx-base"))
    assert hub.pop("router_aux_loss_coef") == ours["ffn_config"]["moe_loss_weight"] == 0.05
    assert hub["attn_config"]["rope_theta"] == ours["attn_config"]["rope_theta"] == 500_000
    assert (hub.pop("rope_parameters"), ours.pop("rope_parameters")) == (
        {"rope_theta": 10_000.0, "rope_type": "default"}, {"rope_theta": 500_000.0, "rope_type": "default"})
    assert ours == hub


def test_gemma3_1b_is_read_with_its_window_pattern_and_two_thetas():
    c = config_from_hf(published("google--gemma-3-1b-pt"), "gemma-3-1b")
    assert c.attn_pattern == ("sliding",) * 5 + ("global",) and c.sliding_window == 512  # sliding_window_pattern 6
    assert (c.rope_theta, c.rope_theta_local, c.rope_scaling) == (1e6, 1e4, None)
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.d_model, c.vocab_size) == (4, 1, 256, 1152, 262144)
    assert (c.attn_softcap, c.final_logit_softcap, c.query_scale_dim) == (None, None, None)  # 256 = head_dim
    assert [layer.rope.theta for layer in layer_plan(c)[4:7]] == [1e4, 1e6, 1e4]


def test_gemmas_legacy_gelu_is_the_tanh_gelu():
    """google/gemma-7b says hidden_act "gelu"; GemmaConfig (5.23) runs gelu_pytorch_tanh."""
    assert published("google--gemma-7b")["hidden_act"] == "gelu"
    assert config_from_hf(published("google--gemma-7b"), "g").activation == "gelu_tanh"
    assert transformers.AutoConfig.for_model(**published("google--gemma-7b")).hidden_act == "gelu_pytorch_tanh"


@pytest.mark.parametrize("name", ["meta-llama--Llama-4-Scout-17B-16E.text_config",
                                  "meta-llama--Llama-4-Maverick-17B-128E.text_config"])
def test_llama4s_hub_temperature_flag_is_refused_by_transformers_5_and_read_as_true(name):
    data = published(name)
    assert data["attn_temperature_tuning"] == 4
    with pytest.raises(Exception, match="attn_temperature_tuning"):  # StrictDataclassFieldValidationError
        transformers.AutoConfig.for_model(**data)
    config = config_from_hf(data, name)
    assert (config.attn_temperature_floor, config.attn_temperature_scale) == (8192, 0.1)
    assert config.layer_attn_kinds[:4] == ("chunked", "chunked", "chunked", "global_nope")
