"""GPT-NeoX and Pythia (convert/models/gpt_neox.py): the fused q | k | v split per head and
rejoined bit for bit, both spellings of the RoPE settings, the refusals naming their fields,
and transformers' own GPTNeoXForCausalLM read by lmref (tests/test_hf_convert.py,
test_hf_float64.py and test_hf_transformers4.py run the presets and the variants of
tests/hf_configs.py through the generic checks).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lmref.conformance.cases import case_config
from lmref.convert import ConversionError, config_from_hf, from_hf, hf_config, hf_state_dict
from lmref.convert.layout import per_head_order
from lmref.spec import RopeScaling, get_preset, init_params, tiny

from tests.hf_checkpoints import (assert_captures_are_the_goldens, assert_fused_per_head,
                                  assert_golden_matches_transformers, assert_misshaped_is_named,
                                  assert_same_tensors, assert_split_and_rejoin_exact, edit_config, edit_weights,
                                  hf_dir, real_config, save_randomised, written_back)
from tests.hf_configs import VARIANTS

PYTHIA = case_config("pythia-160m")  # d_model 64, 4 heads of 16, a quarter of each rotating
QKV = "gpt_neox.layers.1.attention.query_key_value"


# --- the fused query_key_value ------------------------------------------------------------------


def test_query_key_value_holds_each_heads_q_k_v_rows_in_turn():
    """GPTNeoXAttention.forward: `.view(..., n_heads, 3 * head_dim)` then `.chunk(3)`."""
    params = init_params(PYTHIA, 3)
    assert_fused_per_head(PYTHIA, params, hf_state_dict(PYTHIA, params), QKV)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_split_and_the_rejoin_are_exact(dtype, tmp_path):
    """HF -> lmref -> HF gives the same bits: a checkpoint whose q | k | v were not written by lmref."""
    assert_split_and_rejoin_exact(tmp_path, PYTHIA, dtype, read_key="layers.1.attn.wq")


@pytest.mark.parametrize("key, shape", [(f"{QKV}.weight", (128, 64)), (f"{QKV}.bias", (190,))])
def test_a_fused_tensor_that_does_not_split_into_the_heads_is_named_with_both_sizes(key, shape, tmp_path):
    """A fused GQA projection ([q + 2 kv] rows) or a truncated bias is not the 3 x 4 heads of 16."""
    expected = (192, 64) if key.endswith("weight") else (192,)
    assert_misshaped_is_named(hf_dir(tmp_path, PYTHIA), key, shape, expected, np.float64)


def test_per_head_order_interleaves_each_heads_slices_and_refuses_uneven_widths():
    assert per_head_order((4, 4, 4), 2) == (0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11)
    assert per_head_order((4, 2), 2) == (0, 1, 4, 2, 3, 5)
    with pytest.raises(ConversionError, match=r"fused widths \(6, 5, 5\) do not split into 2 heads"):
        per_head_order((6, 5, 5), 2)


def test_old_checkpoints_buffers_are_not_weights(tmp_path):
    """Pythia's files carry the causal-mask buffers and the rotary inv_freq of 4.2x."""
    hf_dir(tmp_path, PYTHIA)
    _, params = from_hf(tmp_path)

    def add_buffers(t):
        for i in range(PYTHIA.n_layers):
            a = f"gpt_neox.layers.{i}.attention"
            t |= {f"{a}.bias": np.tril(np.ones((1, 1, 8, 8), np.float32)), f"{a}.masked_bias": np.float32([-1e9]),
                  f"{a}.rotary_emb.inv_freq": np.ones(2, np.float32)}

    edit_weights(tmp_path, add_buffers)
    back = from_hf(tmp_path)[1]
    assert all(np.array_equal(back[k], params[k]) for k in params)


# --- config.json --------------------------------------------------------------------------------


def test_use_parallel_residual_false_is_the_sequential_layer(tmp_path):
    edit_config(hf_dir(tmp_path, PYTHIA), lambda d: d.update(use_parallel_residual=False))
    config = from_hf(tmp_path)[0]
    assert config == dataclasses.replace(PYTHIA, parallel_residual=False)


def _legacy(data: dict) -> dict:
    """`data` as transformers 4.57 saves it: rotary_pct, rotary_emb_base and its copies
    partial_rotary_factor and rope_theta, rope_scaling with a legacy "type"; no rope_parameters."""
    rope = data.pop("rope_parameters")
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor", "rope_type")}
    return data | {"rotary_pct": rope["partial_rotary_factor"], "partial_rotary_factor": rope["partial_rotary_factor"],
                   "rotary_emb_base": rope["rope_theta"], "rope_theta": rope["rope_theta"],
                   "rope_scaling": {"type": rope["rope_type"], **scaling} if scaling else None}


def _current(data: dict) -> dict:
    """`data` as transformers 5.23 saves it: rope_parameters only."""
    return {k: v for k, v in data.items() if k not in ("rotary_pct", "rotary_emb_base", "rope_scaling")}


@pytest.mark.parametrize("key", ["pythia-sequential-tied-linear-rope",
                                 "pythia-head_dim-15-rotating-6-no-attn-bias-llama3-rope"])
@pytest.mark.parametrize("spelling", [_legacy, _current])
def test_either_rope_spelling_alone_reads_the_same(key, spelling):
    config = VARIANTS[key]
    assert config_from_hf(spelling(hf_config(config)), "x") == config


def test_lmrefs_file_gives_transformers_5_its_rope():
    transformers = pytest.importorskip("transformers")
    config = VARIANTS["pythia-head_dim-15-rotating-6-no-attn-bias-llama3-rope"]
    read = transformers.GPTNeoXConfig(**hf_config(config)).rope_parameters
    assert read == {"rope_type": "llama3", "rope_theta": 10_000.0, "partial_rotary_factor": 0.4, "factor": 8.0,
                    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def _set(path: str, value):
    def edit(data):
        *parents, leaf = path.split(".")
        for p in parents:
            data = data.setdefault(p, {})
        data[leaf] = value
    return edit


REFUSED = [
    # two spellings, two models: 4.x runs rotary_*, 5.x the dicts
    ("rope_parameters.partial_rotary_factor", 0.5,
     "rotary_pct=0.25 is not supported: disagrees with rope_parameters.partial_rotary_factor=0.5"),
    ("rope_parameters.rope_theta", 5e5, "rotary_emb_base=10000.0 is not supported: disagrees with "
                                        "rope_parameters.rope_theta=500000.0"),
    ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope_scaling={'rope_type': 'linear', 'factor': 2.0} "
                                                             "is not supported: disagrees with rope_parameters"),
    ("rope_scaling", {"type": "linear", "factor": 2.0, "rope_theta": 1e6}, "rope_scaling.rope_theta=1000000.0"),
    # 4.x's copies, which neither version runs
    ("rope_theta", 5e5, "rope_theta=500000.0 is not supported: transformers ignores it for gpt_neox, which runs 10000.0"),
    ("partial_rotary_factor", 1.0, "partial_rotary_factor=1.0 is not supported: transformers ignores it"),
    ("rotary_pct", "0.25", "rotary_pct='0.25' is not supported: expected a number"),
    ("rope_parameters", [0.25], "rope_parameters=[0.25] is not supported: expected a JSON object"),
    # rope types GPTNeoXRotaryEmbedding runs (ROPE_INIT_FUNCTIONS) and lmref does not convert
    ("rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope_scaling.rope_type='dynamic'"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0}, "rope_parameters.rope_type='yarn'"),
    ("num_attention_heads", 5, "num_attention_heads=5 is not supported: hidden_size (64) must be divisible by it"),
    ("hidden_act", "mish", "hidden_act='mish'"),
    ("rotary_ndims", 4, "unknown field(s) rotary_ndims"),
]


@pytest.mark.parametrize("field, value, named", REFUSED, ids=[f"{f}={v!r}" for f, v, _ in REFUSED])
def test_a_config_json_field_lmref_cannot_represent_is_named(field, value, named, tmp_path):
    edit_config(hf_dir(tmp_path, PYTHIA), _set(field, value))
    with pytest.raises(ConversionError) as info:
        from_hf(tmp_path)
    assert named in str(info.value)


@pytest.mark.parametrize("spelling, key", [(_legacy, "rotary_pct"), (_current, "rope_parameters.partial_rotary_factor")])
@pytest.mark.parametrize("fraction, width", [(0.05, 0), (0.3125, 5), (1.5, 24)])
def test_a_rotated_width_lmref_cannot_express_is_named(spelling, key, fraction, width):
    """None (no RoPE at all), an odd one (transformers then rotates one dim more, with
    frequencies over the odd width), more than the head."""
    data = spelling(hf_config(PYTHIA))
    _set(key, fraction)(data)
    data |= {"partial_rotary_factor": fraction} if "partial_rotary_factor" in data else {}  # 4.57's copy
    with pytest.raises(ConversionError, match=rf"{key}={fraction} is not supported: rotates int\(16 \* {fraction}\) "
                                              rf"= {width} of each head's 16 dims"):
        config_from_hf(data, "x")


INEXPRESSIBLE = {
    "gqa": (dict(n_kv_heads=2), "n_kv_heads: GPT-NeoX attention is multi-head"),
    "qkv-bias-only": (dict(attn_out_bias=False), "attn_out_bias: transformers' attention_bias"),
    "interleaved": (dict(rope_layout="interleaved"), "rope_layout='interleaved' (transformers' gpt_neox has 'halves')"),
    "shared-norm": (dict(shared_attn_norm=True), "shared_attn_norm=True (transformers' gpt_neox has False)"),
    "odd-width": (dict(d_model=60, head_dim=15, rope_fraction=0.5),
                  "rope_fraction: transformers rotates int(head_dim * rotary_pct) = 7 dims, which must be even"),
    "head_dim": (dict(head_dim=24), "head_dim: GPT-NeoX derives head_dim = d_model / n_heads"),
    "yarn": (dict(rope_scaling=RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=64)),
             "rope_scaling: kind 'yarn' is not converted"),
    "gated": (dict(mlp="gated"), "mlp='gated' (transformers' gpt_neox has 'plain')"),
    "no-mlp-bias": (dict(mlp_bias=False), "mlp_bias=False (transformers' gpt_neox has True)"),
    "rmsnorm": (dict(norm="rmsnorm", norm_bias=False), "norm='rmsnorm' (transformers' gpt_neox has 'layernorm')"),
}


@pytest.mark.parametrize("key", sorted(INEXPRESSIBLE))
def test_a_config_gpt_neox_cannot_express_is_refused_by_name(key):
    changes, named = INEXPRESSIBLE[key]
    with pytest.raises(ConversionError) as info:
        hf_config(tiny("pythia-160m", **changes))
    assert named in str(info.value)


def test_gpt_neox_20bs_file_says_gelu_fast_which_is_its_presets_tanh_gelu():
    """EleutherAI/gpt-neox-20b says hidden_act gelu_fast (FastGELUActivation, the tanh GELU;
    the fused bias-GELU of the GPT-NeoX library is the tanh formula); Pythia's files say the exact gelu."""
    data = real_config("EleutherAI--gpt-neox-20b")
    assert data["hidden_act"] == "gelu_fast"
    assert config_from_hf(data, "read") == dataclasses.replace(get_preset("gpt-neox-20b"), name="read")
    assert get_preset("gpt-neox-20b").activation == "gelu_tanh" and get_preset("pythia-160m").activation == "gelu"


def test_gelu_fast_is_the_tanh_gelu_to_a_few_ulps():
    torch = pytest.importorskip("torch")
    from transformers.activations import ACT2FN

    x = torch.linspace(-8, 8, 10_001, dtype=torch.float64)
    fast, tanh = ACT2FN["gelu_fast"](x), ACT2FN["gelu_new"](x)
    assert float((fast - tanh).abs().max()) < 1e-11


def test_a_config_json_without_fields_means_the_class_defaults():
    transformers = pytest.importorskip("transformers")
    full = transformers.AutoConfig.for_model("gpt_neox").to_dict()
    assert config_from_hf({"model_type": "gpt_neox"}, "x") == config_from_hf(full, "x")


# --- transformers' own models -------------------------------------------------------------------

SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128, bos_token_id=None, eos_token_id=None)
MODELS = {
    "pythia-style": SMALL | dict(rotary_pct=0.25, rotary_emb_base=10_000),
    "sequential-tied-half-rope": SMALL | dict(use_parallel_residual=False, tie_word_embeddings=True,
                                              rope_parameters={"rope_type": "default", "rope_theta": 5e4,
                                                               "partial_rotary_factor": 0.5}),
    "no-attention-bias-linear-rope": SMALL | dict(attention_bias=False, hidden_act="gelu_new",
                                                  rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def neox_model(request, tmp_path_factory):
    """(name, GPTNeoXForCausalLM in eval mode, its save_pretrained directory)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    directory = tmp_path_factory.mktemp(request.param)
    model = save_randomised(transformers.GPTNeoXForCausalLM, transformers.GPTNeoXConfig(**MODELS[request.param]),
                            directory)
    return request.param, model, directory


def test_golden_matches_transformers_gpt_neox(neox_model):
    name, model, directory = neox_model
    assert_golden_matches_transformers(model, directory, name)


def test_transformers_gpt_neox_round_trips_bit_for_bit(neox_model, tmp_path):
    from tests.test_hf_transformers import _numeric_fields

    name, _, directory = neox_model
    _, original, exported = written_back(directory, tmp_path)
    assert_same_tensors(exported, original, name, dtypes=False)  # embed_out, as 5.23 saves lm_head
    assert _numeric_fields(tmp_path) == _numeric_fields(directory)


def test_captures_of_the_sequential_variant_are_the_goldens():
    """LAYER_MODULES: attention.dense, mlp.dense_4h_to_h and the layer are what lmref captures,
    in the sequential layer too (the conformance suite runs the parallel presets)."""
    pytest.importorskip("transformers")
    assert_captures_are_the_goldens(VARIANTS["pythia-sequential-tied-linear-rope"])
