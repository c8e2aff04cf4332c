"""Falcon (convert/models/falcon.py): the fused q | k | v of the three layouts split and rejoined
bit for bit, FalconDecoderLayer's combinations of flags read as the block transformers runs (and
the ones it fails on refused by name), the RW-era keys, and transformers' own FalconForCausalLM
read by lmref (tests/test_hf_convert.py, test_hf_float64.py and test_hf_transformers4.py run the
presets and the variants of tests/hf_configs.py through the generic checks).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lmref.conformance.cases import case_config
from lmref.convert import ConversionError, config_from_hf, from_hf, hf_config, hf_state_dict
from lmref.spec import RopeScaling, init_params, tiny

from tests.hf_checkpoints import (assert_captures_are_the_goldens, assert_golden_matches_transformers,
                                  assert_misshaped_is_named, assert_same_tensors, assert_split_and_rejoin_exact,
                                  edit_config, hf_dir, save_randomised, written_back)
from tests.hf_configs import VARIANTS

SEVEN = case_config("falcon-7b")  # old architecture, multi-query: 4 heads of 16, 1 KV head
FORTY = case_config("falcon-40b")  # new architecture: 8 heads of 16 in 2 KV groups
MULTI_HEAD = VARIANTS["falcon-multi-head-tanh-gelu-narrow-mlp"]  # old architecture, 4 KV heads
SEQUENTIAL = VARIANTS["falcon-sequential-multi-query-biases-untied-linear-rope"]
QKV = "transformer.h.1.self_attention.query_key_value"


# --- the fused query_key_value ------------------------------------------------------------------


def _rows_of(config, params: dict, name: str, head: int) -> np.ndarray:
    """Head `head` of canonical projection `name` ("q", "k" or "v") as nn.Linear rows [hd, d]."""
    hd = config.head_dim
    return params[f"layers.1.attn.w{name}"][:, head * hd:(head + 1) * hd].T


@pytest.mark.parametrize("config", [FORTY, SEVEN, MULTI_HEAD], ids=["new-grouped", "multi-query", "multi-head"])
def test_query_key_value_holds_each_kv_groups_q_heads_then_k_then_v(config):
    """FalconAttention._split_heads: view(..., groups, heads // groups + 2, head_dim), the q heads
    first; multi-query is one group (all q, k, v), multi-head one group per head (q, k, v)."""
    params = init_params(config, 3)
    weight = hf_state_dict(config, params)[f"{QKV}.weight"]
    per_group, hd = config.n_heads // config.n_kv_heads, config.head_dim
    assert weight.shape == ((config.n_heads + 2 * config.n_kv_heads) * hd, config.d_model)
    blocks = weight.reshape(config.n_kv_heads, per_group + 2, hd, config.d_model)  # [groups, q.. k v, hd, d]
    for g in range(config.n_kv_heads):
        for j in range(per_group):
            assert np.array_equal(blocks[g, j], _rows_of(config, params, "q", g * per_group + j)), (g, j)
        assert np.array_equal(blocks[g, -2], _rows_of(config, params, "k", g)), g
        assert np.array_equal(blocks[g, -1], _rows_of(config, params, "v", g)), g


def test_the_fused_bias_follows_the_weights_rows():
    config = dataclasses.replace(FORTY, qkv_bias=True, attn_out_bias=True, mlp_bias=True)
    params = init_params(config, 4)
    bias = hf_state_dict(config, params)[f"{QKV}.bias"].reshape(2, 6, 16)  # [groups, 4 q + k + v, hd]
    assert np.array_equal(bias[1, 2], params["layers.1.attn.bq"][6 * 16:7 * 16])
    assert np.array_equal(bias[1, 4], params["layers.1.attn.bk"][16:32])
    assert np.array_equal(bias[0, 5], params["layers.1.attn.bv"][:16])


@pytest.mark.parametrize("key", ["falcon-40b", "falcon-7b", "falcon-multi-head-tanh-gelu-narrow-mlp",
                                 "falcon-sequential-multi-query-biases-untied-linear-rope"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_split_and_the_rejoin_are_exact(key, dtype, tmp_path):
    """HF -> lmref -> HF gives the same bits: a checkpoint whose tensors lmref did not write."""
    config = VARIANTS.get(key) or case_config(key)
    assert_split_and_rejoin_exact(tmp_path, config, dtype, read_key="layers.1.attn.wk")


@pytest.mark.parametrize("config, shape, expected", [
    (FORTY, (176, 128), (192, 128)), (SEVEN, (192, 64), (96, 64)), (MULTI_HEAD, (96, 64), (192, 64))],
    ids=["40b-one-kv-group-short", "7b-as-multi-head", "multi-head-as-multi-query"])
def test_a_fused_tensor_that_does_not_split_into_the_configs_heads_is_named(config, shape, expected, tmp_path):
    """falcon-40b's 2 groups of 4 q + k + v heads are 192 rows (176: one KV group of 1 + 2);
    a multi-head [3 d, d] tensor under a multi-query config (or the reverse) is named with
    both shapes."""
    assert_misshaped_is_named(hf_dir(tmp_path, config), f"{QKV}.weight", shape, expected)


# --- config.json: the block, the KV heads -------------------------------------------------------

BLOCKS = [
    # (new_decoder_architecture, parallel_attn, num_ln_in_parallel_attn) -> (parallel, shared norm)
    ((False, True, None), (True, True)), ((False, True, 1), (True, True)),
    ((False, False, None), (False, False)), ((False, False, 2), (False, False)),
    ((True, True, None), (True, False)), ((True, True, 2), (True, False)), ((True, True, 1), (True, True)),
]


@pytest.mark.parametrize("flags, block", BLOCKS, ids=[str(f) for f, _ in BLOCKS])
def test_each_decoder_layer_combination_is_the_block_transformers_runs(flags, block):
    new, parallel, n_ln = flags
    data = {"model_type": "falcon", "hidden_size": 64, "num_attention_heads": 4, "num_kv_heads": 2 if new else None,
            "new_decoder_architecture": new, "parallel_attn": parallel, "num_ln_in_parallel_attn": n_ln}
    config = config_from_hf(data, "x")
    assert (config.parallel_residual, config.shared_attn_norm) == block
    assert config.n_kv_heads == (2 if new else 1)  # the old architecture's multi_query default


def _set(**fields):
    return lambda data: data.update(fields)


REFUSED = [
    # combinations FalconDecoderLayer builds one way and runs another (AttributeError, UnboundLocalError)
    (_set(new_decoder_architecture=False, num_ln_in_parallel_attn=2), "num_ln_in_parallel_attn=2 is not supported: "
     "without new_decoder_architecture, FalconDecoderLayer builds ln_attn and ln_mlp but runs input_layernorm"),
    (_set(parallel_attn=False), "parallel_attn=False is not supported: with new_decoder_architecture"),
    (_set(num_ln_in_parallel_attn=3), "num_ln_in_parallel_attn=3 is not supported: expected 1, 2 or null"),
    (_set(new_decoder_architecture=None), "new_decoder_architecture=None is not supported: expected true or false"),
    (_set(num_kv_heads=3), "num_kv_heads=3 is not supported: num_attention_heads (8) must be a multiple of it"),
    (_set(new_decoder_architecture=False, multi_query=False, num_kv_heads=2),
     "num_kv_heads=2 is not supported: without multi_query or new_decoder_architecture"),
    (_set(new_decoder_architecture=False, multi_query=True, num_kv_heads=2),
     "num_kv_heads=2 is not supported: multi_query runs 1 KV head and transformers ignores this field"),
    (_set(alibi=True), "alibi=True is not supported: transformers' Falcon ALiBi rounds its slopes to bfloat16"),
    (_set(apply_residual_connection_post_layernorm=True), "apply_residual_connection_post_layernorm=True"),
    # the RW keys transformers never reads, stating another model
    (_set(n_head=4), "n_head=4 is not supported: transformers' FalconConfig never reads it and runs "
                     "num_attention_heads=8"),
    (_set(n_layer=3), "n_layer=3 is not supported"),
    (_set(n_head_kv=8), "n_head_kv=8 is not supported: transformers' FalconConfig never reads it and runs 2"),
    (_set(n_embed=64), "hidden_size=128 is not supported: the same field as n_embed=64"),
    (_set(num_attention_heads=5), "num_attention_heads=5 is not supported: hidden_size (128) must be divisible"),
    (_set(activation="mish"), "activation='mish'"),
    (_set(ffn_hidden_size=0), "ffn_hidden_size=0 is not supported: expected a positive integer"),
    (_set(rope_parameters={"rope_type": "yarn", "factor": 4.0}), "rope_parameters.rope_type='yarn'"),
    (_set(rope_scaling={"rope_type": "linear", "factor": 2.0}),
     "rope_scaling={'rope_type': 'linear', 'factor': 2.0} is not supported: disagrees with rope_parameters"),
    (_set(rotary=True), "unknown field(s) rotary"),
]


@pytest.mark.parametrize("edit, named", REFUSED, ids=[n[:40] for _, n in REFUSED])
def test_a_config_json_field_lmref_cannot_represent_is_named(edit, named, tmp_path):
    edit_config(hf_dir(tmp_path, FORTY), edit)
    with pytest.raises(ConversionError) as info:
        from_hf(tmp_path)
    assert named in str(info.value)


def test_the_rw_keys_are_read_where_they_state_what_transformers_runs():
    """n_embed is FalconConfig's alias of hidden_size (popped in __post_init__); n_head, n_layer
    and n_head_kv, which it never reads, are accepted when they agree."""
    data = hf_config(FORTY)
    legacy = {k: v for k, v in data.items() if k not in ("hidden_size", "lmref_name")} | {
        "n_embed": 128, "n_head": 8, "n_layer": 2, "n_head_kv": 2}
    assert config_from_hf(legacy, "x") == dataclasses.replace(FORTY, name="x")


def test_a_null_ffn_hidden_size_beside_n_embed_alone_is_two_models():
    """4.57 multiplies the hidden_size argument (class default 4544), 5.23 n_embed."""
    data = {"model_type": "falcon", "n_embed": 64, "num_attention_heads": 4, "ffn_hidden_size": None}
    with pytest.raises(ConversionError, match=r"ffn_hidden_size=None is not supported: null means 4 \* n_embed = "
                                              r"256 in transformers 5.x and 4 \* hidden_size = 18176 in 4.x"):
        config_from_hf(data, "x")
    assert config_from_hf(data | {"ffn_hidden_size": 256}, "x").d_ff == 256


def test_a_multi_query_file_saved_by_transformers_says_num_kv_heads_is_the_heads():
    """FalconConfig.__post_init__ fills a null num_kv_heads with the heads, and save_pretrained
    writes that; multi_query runs 1 KV head whatever it says."""
    data = hf_config(SEVEN) | {"num_kv_heads": SEVEN.n_heads}
    assert config_from_hf(data, "x").n_kv_heads == 1


INEXPRESSIBLE = {
    "biases-apart": (dict(qkv_bias=True), "mlp_bias: transformers' bias puts biases on query_key_value, dense and "
                                          "the MLP together"),
    "sequential-gqa": (dict(parallel_residual=False, shared_attn_norm=False, n_kv_heads=2),
                       "n_kv_heads: Falcon's sequential layer (the old architecture) has 1 KV head or n_heads"),
    "head_dim": (dict(head_dim=24), "head_dim: Falcon derives head_dim = d_model / n_heads"),
    "partial-rope": (dict(rope_fraction=0.5), "rope_fraction=0.5 (transformers' falcon has 1.0)"),
    "alibi": (dict(position="alibi"), "position='alibi' (transformers' falcon has 'rope')"),
    "gated": (dict(mlp="gated"), "mlp='gated' (transformers' falcon has 'plain')"),
    "rmsnorm": (dict(norm="rmsnorm", norm_bias=False), "norm='rmsnorm' (transformers' falcon has 'layernorm')"),
    "head-bias": (dict(lm_head_bias=True, tie_embeddings=False), "lm_head_bias=True"),
    "yarn": (dict(rope_scaling=RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=64)),
             "rope_scaling: kind 'yarn' is not converted"),
}


@pytest.mark.parametrize("key", sorted(INEXPRESSIBLE))
def test_a_config_falcon_cannot_express_is_refused_by_name(key):
    changes, named = INEXPRESSIBLE[key]
    with pytest.raises(ConversionError) as info:
        hf_config(tiny("falcon-7b", **changes))
    assert named in str(info.value)


@pytest.mark.parametrize("config, fields", [
    (SEVEN, dict(new_decoder_architecture=False, parallel_attn=True, multi_query=True, num_ln_in_parallel_attn=None)),
    (FORTY, dict(new_decoder_architecture=True, parallel_attn=True, num_kv_heads=2, num_ln_in_parallel_attn=None)),
    (MULTI_HEAD, dict(new_decoder_architecture=False, parallel_attn=True, multi_query=False)),
    (SEQUENTIAL, dict(new_decoder_architecture=False, parallel_attn=False, multi_query=True, bias=True)),
    (VARIANTS["falcon-new-architecture-one-norm-4-kv-heads"],
     dict(new_decoder_architecture=True, num_kv_heads=4, num_ln_in_parallel_attn=1)),
], ids=["7b", "40b", "multi-head", "sequential", "new-one-norm"])
def test_each_block_is_written_in_the_architecture_that_says_it(config, fields):
    data = hf_config(config)
    assert {k: data[k] for k in fields} == fields


# --- transformers' own models -------------------------------------------------------------------

SMALL = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, bos_token_id=None,
             eos_token_id=None, max_position_embeddings=128)
MODELS = {
    "7b-style": SMALL,
    "40b-style": SMALL | dict(new_decoder_architecture=True, num_kv_heads=2, ffn_hidden_size=96),
    "new-one-norm-biases-untied": SMALL | dict(new_decoder_architecture=True, num_kv_heads=2,
                                               num_ln_in_parallel_attn=1, bias=True, tie_word_embeddings=False),
    "sequential-multi-head-linear-rope": SMALL | dict(parallel_attn=False, multi_query=False, activation="gelu_new",
                                                      rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                       "rope_theta": 5e4}),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def falcon_model(request, tmp_path_factory):
    """(name, FalconForCausalLM in eval mode, its save_pretrained directory)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp(request.param)
    model = save_randomised(transformers.FalconForCausalLM, transformers.FalconConfig(**MODELS[request.param]),
                            directory)
    return request.param, model, directory


def test_golden_matches_transformers_falcon(falcon_model):
    name, model, directory = falcon_model
    assert_golden_matches_transformers(model, directory, name)


def test_transformers_falcon_round_trips_bit_for_bit(falcon_model, tmp_path):
    from tests.test_hf_transformers import _numeric_fields

    name, _, directory = falcon_model
    _, original, exported = written_back(directory, tmp_path)
    assert_same_tensors(exported, original, name, dtypes=False)
    # FalconDecoderLayer sets a null num_ln_in_parallel_attn to 2 on the model's config in the new
    # architecture, so save_pretrained writes 2; lmref writes null, as the Hub's falcon-40b says
    saved = _numeric_fields(directory)
    if saved["new_decoder_architecture"] and saved["num_ln_in_parallel_attn"] == 2:
        saved["num_ln_in_parallel_attn"] = None
    assert _numeric_fields(tmp_path) == saved


def test_captures_of_the_sequential_variant_are_the_goldens():
    """LAYER_MODULES: self_attention.dense, mlp.dense_4h_to_h and the layer are what lmref
    captures, in the sequential layer too (the conformance suite runs the parallel presets)."""
    pytest.importorskip("transformers")
    assert_captures_are_the_goldens(SEQUENTIAL)
