"""Sizes, counts and lengths in a Hugging Face config.json, read as positive integers.

Every model type reads the integers its model is built from (hidden size, head counts, layer
counts, expert counts, vocabulary, widths, positions, windows) through one reader,
convert/fields.py `HFConfig.positive_integer`, before any arithmetic on them: a string, a
float (64.0 too: transformers 5.x refuses it for an int field), a boolean, 0, a negative number
or a null where the class gives null no meaning is refused with a ConversionError naming
config.json and the field, never a Python traceback (`d // n_heads` on "x" or on 0 was one).
"""

from __future__ import annotations

import json
import re

import pytest

from lmref.conformance.cases import case_config
from lmref.convert import ConversionError, from_hf, hf_config
from lmref.convert.hf import config_from_hf
from lmref.spec.presets import PRESETS

POSITIVE = "expected a positive integer"

# The integer fields lmref reads as sizes, in any model type's config.json.
SIZES = frozenset({
    "vocab_size", "hidden_size", "n_embd", "d_model", "head_dim", "query_pre_attn_scalar",
    "intermediate_size", "intermediate_size_mlp", "n_inner", "ffn_hidden_size", "moe_intermediate_size",
    "shared_expert_intermediate_size", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads",
    "kv_n_heads", "num_kv_heads", "num_hidden_layers", "n_layer", "n_layers", "num_experts", "num_local_experts",
    "moe_num_experts", "num_experts_per_tok", "moe_top_k", "decoder_sparse_step", "max_position_embeddings",
    "n_positions", "max_seq_len", "seq_length", "sliding_window", "floor_scale", "rotary_dim", "pretraining_tp",
    "image_size", "patch_size", "num_channels",
})
# Integer fields that are no size, each checked by its own rule (and its own tests).
OTHER_INTEGERS = {
    "image_token_index": "a token id, 0 included",
    "vision_feature_layer": "an index into the tower's hidden states, negative ones included",
    "image_seq_length": "the processor's count, which no model reads",
    "max_window_layers": "a layer index, 0 included (qwen2.first_window_layer)",
    "original_max_position_embeddings": "a RoPE length (tests/test_convert_numbers.py)",
    "attention_chunk_size": "refused as a chunk size (tests/test_hf_llama4.py)",
    "no_rope_layer_interval": "unread beside the no_rope_layers list lmref writes",
    "interleave_moe_layer_step": "unread beside the moe_layers list lmref writes",
    "alibi_bias_max": "the one value transformers' MPT hard-codes",
    "expansion_ratio": "the one value transformers' MPT hard-codes",
}
# Fields whose null the transformers class derives (MHA, hidden_size // heads, 4 * hidden, no
# window, GPT-J's whole head when it has one).
NULL_MEANS_DEFAULT = {"num_key_value_heads", "num_kv_heads", "head_dim", "n_inner", "ffn_hidden_size",
                      "sliding_window", "rotary_dim"}
# Read as the integer when integral: Gemma 2 files were written with 144.0, which 4.x ran as 144.
INTEGRAL_FLOAT_READ = {"query_pre_attn_scalar"}
NESTED = ("text_config", "vision_config", "attn_config", "ffn_config")


def _convertible() -> dict[str, str]:
    """model_type -> the first preset lmref converts to it (its file states the type's sizes)."""
    archs: dict[str, str] = {}
    for arch in sorted(PRESETS):
        try:
            data = hf_config(case_config(arch))
        except ConversionError:
            continue
        archs.setdefault(data["model_type"], arch)
    return archs


def _integer_fields(data: dict) -> list[str]:
    """The integer fields of a config.json dict, and the SIZES it states as null (GPT-2's n_inner),
    nested ones as "attn_config.kv_n_heads"."""
    def integers(d: dict) -> list[str]:
        return [key for key, value in d.items()
                if (isinstance(value, int) and not isinstance(value, bool)) or (key in SIZES and value is None)]
    return integers(data) + [f"{outer}.{key}" for outer in NESTED for key in integers(data.get(outer) or {})]


def _leaf(field: str) -> str:
    return field.rsplit(".", 1)[-1]


ARCHS = _convertible()
FIELDS = [(arch, field) for arch in ARCHS.values() for field in _integer_fields(hf_config(case_config(arch)))
          if _leaf(field) in SIZES]


def _bad_values(field: str) -> list:
    return ["x", 0, -2, 1.5, True, *([] if _leaf(field) in INTEGRAL_FLOAT_READ else [64.0]),
            *([] if _leaf(field) in NULL_MEANS_DEFAULT else [None])]


CASES = [(arch, field, value) for arch, field in FIELDS for value in _bad_values(field)]


def _read_with(tmp_path, arch: str, edits: dict):
    """from_hf of a directory holding `arch`'s config.json with `edits` ("attn_config.x": nested).
    The config is refused before any weight is read, so none is written."""
    data = hf_config(case_config(arch))
    for path, value in edits.items():
        *parents, leaf = path.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    (tmp_path / "config.json").write_text(json.dumps(data))
    return from_hf(tmp_path)


@pytest.mark.parametrize("arch, field, value", CASES, ids=[f"{a}-{f}-{v!r}" for a, f, v in CASES])
def test_every_size_that_is_not_a_positive_integer_is_refused_naming_it(arch, field, value, tmp_path):
    qwen_window = field == "sliding_window" and "use_sliding_window" in hf_config(case_config(arch))
    in_use = {"use_sliding_window": True} if qwen_window else {}  # Qwen's window is read only in use
    with pytest.raises(ConversionError) as info:
        _read_with(tmp_path, arch, {field: value} | in_use)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'config.json'} (")
    assert f" {field}={value!r} is not supported: {POSITIVE}" in message


def test_the_sizes_cover_every_model_type_lmref_converts():
    tested = {hf_config(case_config(arch))["model_type"] for arch, _ in FIELDS}
    assert tested == set(ARCHS)


def test_every_integer_field_is_a_size_or_named_as_something_else():
    """A new integer field in a model type's file must be classified here before it is tested."""
    found = {_leaf(field) for arch in ARCHS.values() for field in _integer_fields(hf_config(case_config(arch)))}
    assert found - SIZES == set(OTHER_INTEGERS)
    assert SIZES <= found  # no stale name


def test_a_null_the_class_derives_still_reads_as_its_default():
    """A null num_key_value_heads is multi-head attention, a null head_dim hidden_size // heads."""
    config = case_config("llama3")
    read = config_from_hf(hf_config(config) | {"num_key_value_heads": None, "head_dim": None}, config.name)
    assert (read.n_kv_heads, read.head_dim) == (config.n_heads, config.d_model // config.n_heads)


@pytest.mark.parametrize("arch, edits, why", [
    ("gpt2", {"n_head": 5}, "n_embd (64) must be divisible by it"),
    ("dbrx", {"n_heads": 12}, "d_model (128) must be divisible by it (DBRX's head_dim is d_model / n_heads)"),
    ("qwen1.5-moe-a2.7b", {"shared_expert_intermediate_size": 0}, f"{POSITIVE} (Qwen2-MoE always adds"),
    ("qwen2-7b", {"use_sliding_window": True, "layer_types": None, "max_window_layers": "x"}, "expected an integer"),
    ("qwen2-7b", {"use_sliding_window": True, "layer_types": None, "max_window_layers": -1},
     "expected a layer index, 0 or more"),
])
def test_a_size_rule_beyond_positivity_names_the_field(arch, edits, why, tmp_path):
    with pytest.raises(ConversionError, match=re.escape(f"is not supported: {why}")):
        _read_with(tmp_path, arch, edits)
