"""Phi-1.5 and Phi-2 in Hugging Face form (`phi`, convert/models/phi.py; needs torch and
transformers; nothing is downloaded).

The tables every type runs hold Phi too: exact round trips (tests/test_hf_convert.py), the
presets' cases and the variants of tests/hf_configs.py in true float64 (tests/test_hf_float64.py)
and in transformers 4.57 (tests/test_hf_transformers4.py), the published configs
(tests/test_hf_real_configs.py).  Here, what only Phi has: transformers' own PhiForCausalLM read
and written back; `--impl hf` on every golden check of the presets; the RoPE settings in both
spellings (4.x's top-level fields, 5.x's dicts), which must agree; the rotated width
transformers computes against lmref's; the q/k LayerNorm lmref cannot express; each refusal
naming its field.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.convert import ConversionError, config_from_hf, hf_config  # noqa: E402
from lmref.convert.hf_adapter import HFAdapter  # noqa: E402
from lmref.spec import RopeScaling, get_preset, tiny  # noqa: E402

from tests.controls import run_arch  # noqa: E402
from tests.hf_checkpoints import (assert_golden_matches_transformers, assert_same_tensors,  # noqa: E402
                                  save_randomised, written_back)
from tests.hf_configs import VARIANTS  # noqa: E402
from tests.test_hf_transformers import _numeric_fields  # noqa: E402

# A PhiConfig of 4 heads of 16 dims, 8 of them rotated (the JSON keys, model_type included)
SMALL = dict(model_type="phi", vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=128, bos_token_id=None, eos_token_id=None)


def _transformers_config(**fields) -> transformers.PhiConfig:
    return transformers.PhiConfig(**{k: v for k, v in (SMALL | fields).items() if k != "model_type"})


# --- transformers' own models -------------------------------------------------------------------

MODELS = {
    "phi-2-style-4-of-16": dict(partial_rotary_factor=0.25),
    "gqa-tied-exact-gelu-linear-rope": dict(num_key_value_heads=2, tie_word_embeddings=True, hidden_act="gelu",
                                            rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                             "rope_theta": 5e4, "partial_rotary_factor": 0.5}),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def hf_model(request, tmp_path_factory):
    """(name, PhiForCausalLM at the golden's weight scale in eval mode, its save_pretrained directory)."""
    directory = tmp_path_factory.mktemp(request.param)
    model = save_randomised(transformers.PhiForCausalLM, _transformers_config(**MODELS[request.param]), directory)
    return request.param, model, directory


def test_golden_matches_transformers_phi_logits(hf_model):
    name, model, directory = hf_model
    config = assert_golden_matches_transformers(model, directory, name)
    assert (config.parallel_residual, config.shared_attn_norm, config.lm_head_bias) == (True, True, True)
    assert config.rope_dim == model.model.layers[0].self_attn.rotary_ndims


def test_transformers_phi_written_back_is_bit_for_bit(hf_model, tmp_path):
    """The tied head's bias stays in the file (`lm_head` is an nn.Linear with a bias; only its
    weight is tied)."""
    *_, directory = hf_model
    config, original, exported = written_back(directory, tmp_path)
    assert_same_tensors(exported, original)
    assert "lm_head.bias" in exported
    assert ("lm_head.weight" in exported) == (not config.tie_embeddings)
    assert _numeric_fields(tmp_path) == _numeric_fields(directory)


def test_a_config_json_without_fields_means_the_class_defaults_phi_1_5():
    full = transformers.AutoConfig.for_model("phi").to_dict()
    defaults = config_from_hf({"model_type": "phi"}, "phi-1.5")
    assert defaults == config_from_hf(full, "phi-1.5") == dataclasses.replace(get_preset("phi-1.5"), name="phi-1.5")


@pytest.mark.parametrize("arch", ["phi-1.5", "phi-2"])
def test_every_check_of_phi_passes_in_transformers(arch):
    """`--impl hf` on the presets' golden cases: transformers' KV cache, the loss, and each
    layer's attention (dense) and MLP (fc2) branches captured before their shared sum."""
    results = run_arch(HFAdapter(), arch, GoldenStore())
    assert [(case, cap, r.status) for case, cap, r in results if r.status != "PASS"] == []
    captures = [r for _, cap, r in results if cap == "capture"]
    assert captures and all(r.metrics["missing"] == [] for r in captures)


# --- the RoPE settings ----------------------------------------------------------------------------

def _legacy(data: dict) -> dict:
    """`data` as the Hub's files and transformers 4.57 spell it: top-level fields only."""
    return {k: v for k, v in data.items() if k != "rope_parameters"}


def _current(data: dict) -> dict:
    """`data` as transformers 5.23 saves it: rope_parameters only."""
    return {k: v for k, v in data.items() if k not in ("partial_rotary_factor", "rope_theta", "rope_scaling")}


@pytest.mark.parametrize("key", ["phi-gqa-tied-linear-rope", "phi-head_dim-9-rotating-4-exact-gelu-llama3-rope"])
@pytest.mark.parametrize("spelling", [_legacy, _current])
def test_either_rope_spelling_alone_reads_the_same(key, spelling):
    config = VARIANTS[key]
    assert config_from_hf(spelling(hf_config(config)), "x") == config


def test_lmrefs_file_gives_transformers_5_its_rope():
    read = transformers.PhiConfig(**hf_config(VARIANTS["phi-head_dim-9-rotating-4-exact-gelu-llama3-rope"]))
    assert read.rope_parameters == {"rope_type": "llama3", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5,
                                    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 32}


def test_rope_scaling_replaces_rope_parameters_in_transformers_5():
    """The refusal of a rope_parameters copy beside rope_scaling: 5.23 runs the factor 0.5 and
    theta 10000 (or the top-level fields), not the copy's."""
    read = transformers.PhiConfig(rope_scaling={"type": "linear", "factor": 2.0}, rope_parameters={
        "rope_type": "linear", "factor": 2.0, "rope_theta": 5e5, "partial_rotary_factor": 0.25}).rope_parameters
    assert (read["partial_rotary_factor"], read["rope_theta"]) == (0.5, 10_000.0)


def test_a_file_without_a_factor_rotates_half_the_head_as_transformers_5_does():
    """PhiConfig.__post_init__: `kwargs.setdefault("partial_rotary_factor", 0.5)`."""
    assert transformers.PhiConfig().rope_parameters["partial_rotary_factor"] == 0.5
    assert config_from_hf(SMALL, "x").rope_dim == 8


@pytest.mark.parametrize("fraction, rotated", [(0.25, 4), (0.4, 6), (0.5, 8), (1.0, 16)])
def test_lmref_rotates_the_dims_transformers_rotates(fraction, rotated):
    """rotary_ndims = int(head_dim * partial_rotary_factor): 16 * 0.4 = 6.4 rotates 6."""
    model = transformers.PhiForCausalLM(_transformers_config(partial_rotary_factor=fraction))
    assert model.model.layers[0].self_attn.rotary_ndims == rotated
    assert config_from_hf(SMALL | {"partial_rotary_factor": fraction}, "x").rope_dim == rotated


@pytest.mark.parametrize("fraction, width", [(0.05, 0), (0.3125, 5), (1.5, 24)])
def test_a_rotated_width_lmref_cannot_express_is_named(fraction, width):
    """None (no RoPE at all), an odd one (a table one dim wider than the rotated slice, which
    fails in transformers), more than the head."""
    for key in ("partial_rotary_factor", "rope_parameters.partial_rotary_factor"):
        data = SMALL | ({key: fraction} if "." not in key else {"rope_parameters": {"partial_rotary_factor": fraction}})
        with pytest.raises(ConversionError, match=rf"{re.escape(key)}={fraction} is not supported: rotates "
                                                  rf"int\(16 \* {fraction}\) = {width} of each head's 16 dims"):
            config_from_hf(data, "x")


def test_an_odd_rotated_width_fails_in_transformers():
    model = transformers.PhiForCausalLM(_transformers_config(partial_rotary_factor=0.3125)).eval()
    with pytest.raises(RuntimeError, match="must match the size"), torch.no_grad():
        model(input_ids=torch.zeros((1, 3), dtype=torch.long))


# --- refusals -------------------------------------------------------------------------------------

CONFIG_JSON_REFUSED = [
    # two spellings, two models: 4.x runs the top-level fields, 5.x the dicts
    ({"partial_rotary_factor": 0.25, "rope_parameters": {"partial_rotary_factor": 0.5}},
     "partial_rotary_factor=0.25 is not supported: disagrees with rope_parameters.partial_rotary_factor=0.5"),
    ({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 5e5}},
     "rope_theta=10000.0 is not supported: disagrees with rope_parameters.rope_theta=500000.0"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_parameters": {"rope_type": "default"}},
     "rope_scaling={'type': 'linear', 'factor': 2.0} is not supported: disagrees with rope_parameters"),
    # rope_scaling replaces rope_parameters whole in 5.x (convert_rope_params_to_dict): its copies are never run
    ({"rope_scaling": {"type": "linear", "factor": 2.0},
      "rope_parameters": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.25}},
     "rope_parameters.partial_rotary_factor=0.25 is not supported: transformers ignores it (5.x reads rope_scaling "
     "over rope_parameters, 4.x neither) and runs 0.5"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 5e4,
      "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}},
     "rope_parameters.rope_theta=500000.0 is not supported: transformers ignores it"),
    ({"partial_rotary_factor": "0.5"}, "partial_rotary_factor='0.5' is not supported: expected a number"),
    ({"rope_parameters": [0.5]}, "rope_parameters=[0.5] is not supported: expected a JSON object"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type='dynamic'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope_parameters.rope_type='yarn'"),
    ({"qk_layernorm": True}, "qk_layernorm=True is not supported: Phi's q/k LayerNorm"),
    ({"head_dim": 8}, "head_dim=8 is not supported: PhiAttention would size its heads by it"),
    ({"num_attention_heads": 5}, "num_attention_heads=5 is not supported: hidden_size (64) must be divisible by it"),
    ({"hidden_size": "64"}, "hidden_size='64' is not supported: expected a positive integer"),
    ({"num_key_value_heads": 3}, "gives an invalid lmref config"),
    ({"hidden_act": "mish"}, "hidden_act='mish' is not supported"),
    ({"rotary_dim": 8}, "unknown field(s) rotary_dim"),
]


@pytest.mark.parametrize("fields, named", CONFIG_JSON_REFUSED, ids=[str(f) for f, _ in CONFIG_JSON_REFUSED])
def test_a_config_json_field_phi_does_not_run_is_named(fields, named):
    with pytest.raises(ConversionError) as info:
        config_from_hf(SMALL | fields, "x")
    assert named in str(info.value)


def test_dropouts_and_an_equal_head_dim_are_read_as_the_same_model():
    plain = config_from_hf(SMALL, "x")
    same = SMALL | {"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attention_dropout": 0.1, "head_dim": 16}
    assert config_from_hf(same, "x") == plain


INEXPRESSIBLE = [
    (dict(qkv_bias=False), "qkv_bias=False (transformers' phi has True)"),
    (dict(attn_out_bias=False), "attn_out_bias=False (transformers' phi has True)"),
    (dict(lm_head_bias=False), "lm_head_bias=False (transformers' phi has True)"),
    (dict(shared_attn_norm=False), "shared_attn_norm=False (transformers' phi has True)"),
    (dict(rope_layout="interleaved"), "rope_layout='interleaved' (transformers' phi has 'halves')"),
    (dict(qk_norm="per_head"), "qk_norm='per_head' (transformers' phi has 'none')"),
    (dict(mlp="gated"), "mlp='gated' (transformers' phi has 'plain')"),
    (dict(head_dim=8), "head_dim: Phi derives head_dim = d_model / n_heads"),
    (dict(d_model=36, head_dim=9, rope_fraction=0.6),
     "rope_fraction: transformers rotates int(head_dim * partial_rotary_factor) = 5 dims, which must be even"),
    (dict(rope_scaling=RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=64)),
     "rope_scaling: kind 'yarn' is not converted"),
]


@pytest.mark.parametrize("changes, named", INEXPRESSIBLE, ids=[str(c) for c, _ in INEXPRESSIBLE])
def test_a_config_phi_cannot_express_is_refused_by_name(changes, named):
    with pytest.raises(ConversionError) as info:
        hf_config(tiny("phi-2", **changes))
    assert named in str(info.value)
