"""Phi-3 in Hugging Face form (`phi3`, convert/models/phi3.py; needs torch and transformers;
nothing is downloaded).

The tables every type runs hold Phi-3 too: exact round trips (tests/test_hf_convert.py), the
presets' cases and the variants of tests/hf_configs.py in float64 (tests/test_hf_float64.py), the
published configs (tests/test_hf_real_configs.py).  Here, what only Phi-3 has: the fused q|k|v
and gate|up tensors, split and rejoined exactly and refused by name when they do not split into
the config's heads and width; transformers' own Phi3ForCausalLM read and written back; LongRoPE
in its spellings; `--impl hf` on the presets' golden cases, whose decode across the original
context transformers' cache does not compute (measured here).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file  # noqa: E402

from lmref import impl_numpy  # noqa: E402
from lmref.conformance.cases import case_config  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.convert import ConversionError, config_from_hf, from_hf, hf_config, to_hf  # noqa: E402
from lmref.convert.hf import hf_state_dict  # noqa: E402
from lmref.convert.hf_adapter import HFAdapter  # noqa: E402
from lmref.spec import init_params, tiny  # noqa: E402
from lmref.spec.presets.phi3 import LONG_FACTOR, SHORT_FACTOR  # noqa: E402

from tests.controls import run_arch  # noqa: E402
from tests.hf_checkpoints import (assert_golden_matches_transformers, assert_misshaped_is_named,  # noqa: E402
                                  assert_same_tensors, assert_split_and_rejoin_exact, hf_dir, real_config,
                                  save_randomised, written_back)
from tests.test_hf_transformers import _numeric_fields  # noqa: E402

LONG = tiny("phi-3-mini-128k")  # O 32, factors 1.1 .. 64.8
O = LONG.rope_scaling.original_max_seq_len


# --- the fused tensors ------------------------------------------------------------------------------

def test_qkv_proj_holds_q_then_k_then_v_and_gate_up_the_gate_first():
    """Phi3Attention: q = rows [0, H hd), k the next K hd, v the rest; Phi3MLP: chunk(2), gate first."""
    config = tiny("phi-3-mini-4k", n_kv_heads=2)
    params = init_params(config, 3)
    state = hf_state_dict(config, params)
    qkv, gate_up = state["model.layers.1.self_attn.qkv_proj.weight"], state["model.layers.1.mlp.gate_up_proj.weight"]
    q, kv = config.q_dim, config.kv_dim
    assert qkv.shape == (q + 2 * kv, config.d_model) and gate_up.shape == (2 * config.d_ff, config.d_model)
    assert np.array_equal(qkv[:q], params["layers.1.attn.wq"].T)
    assert np.array_equal(qkv[q : q + kv], params["layers.1.attn.wk"].T)
    assert np.array_equal(qkv[q + kv :], params["layers.1.attn.wv"].T)
    assert np.array_equal(gate_up[: config.d_ff], params["layers.1.mlp.w_gate"].T)
    assert np.array_equal(gate_up[config.d_ff :], params["layers.1.mlp.w_up"].T)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_split_and_the_rejoin_are_exact(dtype, tmp_path):
    """HF -> lmref -> HF gives the same bits, on tensors lmref did not write."""
    assert_split_and_rejoin_exact(tmp_path, tiny("phi-3-mini-128k", n_kv_heads=2), dtype)


@pytest.mark.parametrize("key, rows", [("self_attn.qkv_proj", 3 * 64 - 16), ("mlp.gate_up_proj", 171)],
                         ids=["qkv-one-kv-head-short", "gate_up-one-half"])
def test_a_fused_tensor_that_does_not_split_into_the_configs_heads_is_named(key, rows, tmp_path):
    """4 heads of 16: q|k|v is 192 rows (176 would be k and v one head short); gate|up 2 * 171."""
    directory = hf_dir(tmp_path, tiny("phi-3-mini-4k"), seed=0, dtype=np.float32)
    name = f"model.layers.0.{key}.weight"
    expected = load_file(directory / "model.safetensors")[name].shape
    assert_misshaped_is_named(directory, name, (rows, expected[1]), expected)


# --- transformers' own model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """Phi3ForCausalLM with LongRoPE (O 8, 4 heads of 16, 12 dims rotated) and a window of 6."""
    transformers_config = transformers.Phi3Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, original_max_position_embeddings=8, sliding_window=6,
        rope_scaling={"type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0, 3.0, 4.0],
                      "long_factor": [1.0, 2.0, 6.0, 12.0, 30.0, 60.0]}, partial_rotary_factor=0.75,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    directory = tmp_path_factory.mktemp("phi3")
    return save_randomised(transformers.Phi3ForCausalLM, transformers_config, directory), directory


@pytest.mark.parametrize("seq", [8, 30], ids=["within-O", "past-O"])
def test_golden_matches_transformers_phi3(hf_model, seq):
    model, directory = hf_model
    config = assert_golden_matches_transformers(model, directory, seq=seq)
    assert (config.rope_dim, config.sliding_window, config.rope_scaling.original_max_seq_len) == (12, 6, 8)


def test_transformers_phi3_written_back_is_bit_for_bit(hf_model, tmp_path):
    _, directory = hf_model
    _, original, exported = written_back(directory, tmp_path)
    assert_same_tensors(exported, original)
    assert _numeric_fields(tmp_path) == _numeric_fields(directory)


def test_transformers_cached_decode_keeps_the_short_factors_past_the_original_context(tmp_path):
    """The measurement behind `--impl hf`'s NOT SUPPORTED: transformers' decode from a prompt of
    O - 2 agrees with its own prefills of each prefix until the step that crosses O, then not:
    its cache keeps the keys and values the short factors made.  lmref's decode is the prefixes'
    prefills (spec/MATH.md, "LongRoPE")."""
    config = LONG
    params = {k: v.astype(np.float32) for k, v in init_params(config, 0).items()}
    to_hf(config, params, tmp_path)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager",
                                                              dtype=torch.float32).eval()
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, config.vocab_size, (1, O + 3)))
    with torch.no_grad():
        out, cached = model(input_ids=ids[:, : O - 2], use_cache=True), []
        for t in range(O - 2, O + 3):  # lengths O - 1, O, O + 1 (crosses), O + 2, O + 3
            out = model(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            cached.append(out.logits[0, -1].numpy())
        prefills = [model(input_ids=ids[:, : t + 1]).logits[0, -1].numpy() for t in range(O - 2, O + 3)]
    gaps = [float(np.abs(a - b).max()) for a, b in zip(cached, prefills)]
    assert max(gaps[:2]) < 1e-4 and min(gaps[2:]) > 0.1, gaps
    golden = impl_numpy.decode(config, {k: v.astype(np.float64) for k, v in params.items()}, ids.numpy(), O - 2)
    assert np.abs(golden[0, O - 2 :] - np.stack(prefills)).max() < 1e-4


@pytest.mark.parametrize("arch", ["phi-3-mini-4k", "phi-3-mini-128k"])
def test_every_check_of_phi3_passes_in_transformers_but_the_decode_across_o(arch):
    """`--impl hf` on the presets' golden cases: every check PASSES but the 128k model's decode
    across its original context, NOT SUPPORTED with the reason."""
    results = run_arch(HFAdapter(), arch, GoldenStore())
    off = [(case, cap, r.status) for case, cap, r in results if r.status != "PASS"]
    crossing = f"{arch}/decode-cross-b2-p{O - 2}-n5"
    assert off == ([(crossing, "decode", "NOT SUPPORTED")] if arch == "phi-3-mini-128k" else [])
    reasons = [r.message for case, cap, r in results if r.status != "PASS"]
    assert all("short factors" in message for message in reasons)


# --- config.json: LongRoPE's spellings, the defaults, refusals -------------------------------------

@pytest.mark.parametrize("legacy", ["su", "yarn", "longrope"])
def test_phi3s_legacy_rope_type_names_are_longrope(legacy):
    data = hf_config(LONG)
    data["rope_scaling"] = data["rope_scaling"] | {"type": legacy}
    assert config_from_hf(data, LONG.name) == LONG


def test_the_published_128k_file_reads_as_the_preset_with_its_attention_factor():
    data = real_config("microsoft--Phi-3-mini-128k-instruct")
    c = config_from_hf(data, "phi-3-mini-128k")
    s = c.rope_scaling
    assert (s.factor, s.original_max_seq_len, s.attention_factor) == (32.0, 4096, None)
    assert (s.short_factor, s.long_factor) == (SHORT_FACTOR, LONG_FACTOR)
    assert (c.attn_pattern, c.sliding_window, c.max_seq_len) == (("global",), None, 131072)  # 262144 never cuts


def test_a_window_at_least_the_context_is_no_window_in_transformers_too(tmp_path):
    """Phi-3-mini-128k's sliding_window 262144 > 131072: read as no window, written as null;
    transformers runs the two files alike (its sliding mask with such a window is causal)."""
    config = tiny("phi-3-mini-4k", attn_pattern=("global",), sliding_window=None)
    hf_dir(tmp_path / "null", config, seed=0, dtype=np.float32)
    data = json.loads((tmp_path / "null" / "config.json").read_text())
    assert data["sliding_window"] is None
    hf_dir(tmp_path / "wide", config, seed=0, dtype=np.float32)
    (tmp_path / "wide" / "config.json").write_text(json.dumps(data | {"sliding_window": config.max_seq_len}))
    assert from_hf(tmp_path / "wide")[0] == from_hf(tmp_path / "null")[0]
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, config.vocab_size, (1, 40)))
    logits = []
    for name in ("null", "wide"):
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits.numpy())
    assert np.array_equal(logits[0], logits[1])


def test_a_factor_or_attention_factor_of_its_own_is_written_and_read_back():
    own = tiny("phi-3-mini-128k", rope_scaling=dataclasses.replace(LONG.rope_scaling, factor=4.0,
                                                                     attention_factor=1.5))
    data = hf_config(own)
    assert data["rope_scaling"]["factor"] == 4.0 and data["rope_scaling"]["attention_factor"] == 1.5
    assert "factor" not in hf_config(LONG)["rope_scaling"]  # max_position_embeddings / O: left to transformers
    assert config_from_hf(data, own.name) == own


@pytest.mark.parametrize("edit, named", [
    (lambda d: d | {"rope_scaling": d["rope_scaling"] | {"original_max_position_embeddings": 16}},
     "rope_scaling.original_max_position_embeddings=16"),
    (lambda d: d | {"rope_scaling": d["rope_scaling"] | {"short_mscale": 1.2}}, "rope_scaling.short_mscale=1.2"),
    (lambda d: d | {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type='linear'"),
    (lambda d: d | {"rope_scaling": d["rope_scaling"] | {"long_factor": "64"}}, "rope_scaling.long_factor='64'"),
    (lambda d: d | {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}, "rope_scaling="),
    # head_dim is read (Phi3Attention reads it), but LongRoPE's factors are per rotated pair of the old one
    (lambda d: d | {"head_dim": 8}, "rope_scaling.short_factor: has 8 entries for rope_dim / 2 = 4 rotated pairs"),
], ids=["original-in-the-dict", "mscale", "linear", "factors-not-a-list", "two-scalings", "head_dim-not-the-factors"])
def test_a_config_json_field_lmref_cannot_represent_is_named(edit, named):
    with pytest.raises(ConversionError, match=named.replace("(", r"\(").replace("[", r"\[")):
        config_from_hf(edit(hf_config(LONG)), "x")


@pytest.mark.parametrize("changes, named", [
    (dict(qkv_bias=True), "qkv_bias=True"),
    (dict(attn_pattern=("sliding", "global")), "attn_pattern"),
    (dict(rope_layout="interleaved"), "rope_layout='interleaved'"),
])
def test_a_config_phi3_cannot_express_is_refused_by_name(changes, named):
    with pytest.raises(ConversionError, match=named.replace("(", r"\(")):
        hf_config(dataclasses.replace(case_config("phi-3-mini-4k"), **changes))
