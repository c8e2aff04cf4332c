"""GPT-J in Hugging Face form (`gptj`, convert/models/gptj.py; needs torch and transformers;
nothing is downloaded).

The tables every type runs hold GPT-J too: exact round trips (tests/test_hf_convert.py), the
preset's case and the variants of tests/hf_configs.py in true float64 (tests/test_hf_float64.py)
and in transformers 4.57 (tests/test_hf_transformers4.py), the published config
(tests/test_hf_real_configs.py).  Here, what only GPT-J has: transformers' own GPTJForCausalLM
read and written back; `--impl hf` on every golden check of the preset; `rotary_dim`, the count
of rotated dims, against lmref's rope_fraction (each value transformers cannot run refused by
name, and shown to fail there); the theta transformers hard-codes; a halves config written with
its q, k columns permuted for GPT-J's interleaved pairs; old checkpoints' mask buffers; and each
refusal naming its field.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from lmref import impl_numpy  # noqa: E402
from lmref.conformance.cases import case_config  # noqa: E402
from lmref.conformance.metrics import compare, gate  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.conformance.tolerances import DEFAULT_ROWS  # noqa: E402
from lmref.convert import ConversionError, config_from_hf, from_hf, hf_config, to_hf  # noqa: E402
from lmref.convert.hf_adapter import HFAdapter  # noqa: E402
from lmref.spec import RopeScaling, get_preset, init_params, tiny  # noqa: E402
from transformers.models.gptj.modeling_gptj import create_sinusoidal_positions  # noqa: E402

from tests.controls import run_arch  # noqa: E402
from tests.hf_checkpoints import (assert_golden_matches_transformers, assert_same_tensors,  # noqa: E402
                                  save_randomised, written_back)
from tests.test_hf_float64 import transformers_float64  # noqa: E402
from tests.test_hf_transformers import _numeric_fields  # noqa: E402

F64 = DEFAULT_ROWS["float64"]
# A GPTJConfig of 4 heads of 16 dims, 4 of them rotated (the JSON keys, model_type included)
SMALL = dict(model_type="gptj", vocab_size=97, n_embd=64, n_head=4, n_layer=2, n_positions=64, rotary_dim=4,
             bos_token_id=None, eos_token_id=None)


def _transformers_config(**fields) -> transformers.GPTJConfig:
    return transformers.GPTJConfig(**{k: v for k, v in (SMALL | fields).items() if k != "model_type"})


# --- transformers' own models -------------------------------------------------------------------

MODELS = {
    "rotary-4-of-16-untied": dict(rotary_dim=4),
    "whole-head-tied-exact-gelu-n_inner-100": dict(rotary_dim=16, tie_word_embeddings=True,
                                                   activation_function="gelu", n_inner=100),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def hf_model(request, tmp_path_factory):
    """(name, GPTJForCausalLM at the golden's weight scale in eval mode, its save_pretrained directory)."""
    directory = tmp_path_factory.mktemp(request.param)
    model = save_randomised(transformers.GPTJForCausalLM, _transformers_config(**MODELS[request.param]), directory)
    return request.param, model, directory


def test_golden_matches_transformers_gptj_logits(hf_model):
    name, model, directory = hf_model
    config = assert_golden_matches_transformers(model, directory, name)
    assert (config.parallel_residual, config.shared_attn_norm, config.lm_head_bias) == (True, True, True)
    assert config.rope_dim == model.config.rotary_dim and config.rope_layout == "interleaved"


def test_transformers_gptj_written_back_is_bit_for_bit(hf_model, tmp_path):
    """The tied head's bias stays in the file (`lm_head` is an nn.Linear with a bias; only its
    weight is tied)."""
    *_, directory = hf_model
    config, original, exported = written_back(directory, tmp_path)
    assert_same_tensors(exported, original)
    assert "lm_head.bias" in exported
    assert ("lm_head.weight" in exported) == (not config.tie_embeddings)
    assert _numeric_fields(tmp_path) == _numeric_fields(directory)


def test_a_config_json_without_fields_means_the_class_defaults_the_preset():
    full = transformers.AutoConfig.for_model("gptj").to_dict()
    defaults = config_from_hf({"model_type": "gptj"}, "gptj-6b")
    assert defaults == config_from_hf(full, "gptj-6b") == dataclasses.replace(get_preset("gptj-6b"), name="gptj-6b")


def test_every_check_of_gptj_passes_in_transformers():
    """`--impl hf` on the preset's golden cases: transformers' KV cache, the loss, and each
    layer's attention (out_proj) and MLP (fc_out) branches captured before their shared sum."""
    results = run_arch(HFAdapter(), "gptj-6b", GoldenStore())
    assert [(case, cap, r.status) for case, cap, r in results if r.status != "PASS"] == []
    captures = [r for _, cap, r in results if cap == "capture"]
    assert captures and all(r.metrics["missing"] == [] for r in captures)


# --- rotary_dim -----------------------------------------------------------------------------------

@pytest.mark.parametrize("rotary_dim, fraction", [(2, 0.125), (4, 0.25), (12, 0.75), (16, 1.0)])
def test_rotary_dim_is_the_count_of_rotated_dims(rotary_dim, fraction):
    config = config_from_hf(SMALL | {"rotary_dim": rotary_dim}, "x")
    assert (config.rope_fraction, config.rope_dim) == (fraction, rotary_dim)
    assert hf_config(config)["rotary_dim"] == rotary_dim


# (rotary_dim, what the refusal says); 4 heads of 16 dims
ROTARY_FAILS_IN_TRANSFORMERS = [
    (0, "rotary_dim=0 is not supported: expected a positive integer"),
    (5, "rotary_dim=5 is not supported: odd"),
    (18, "rotary_dim=18 is not supported: more than head_dim (16)"),
]


@pytest.mark.parametrize("rotary_dim, named", ROTARY_FAILS_IN_TRANSFORMERS)
def test_a_rotary_dim_transformers_cannot_run_is_refused_by_name(rotary_dim, named):
    with pytest.raises(ConversionError, match=re.escape(named)):
        config_from_hf(SMALL | {"rotary_dim": rotary_dim}, "x")
    model = transformers.GPTJForCausalLM(_transformers_config(rotary_dim=rotary_dim)).eval()
    with pytest.raises(RuntimeError, match="must match the size"), torch.no_grad():
        model(input_ids=torch.zeros((1, 3), dtype=torch.long))


@pytest.mark.parametrize("rotary_dim", [-4, 4.0, True, "64"])
def test_a_rotary_dim_that_is_not_a_positive_integer_is_refused(rotary_dim):
    with pytest.raises(ConversionError, match=rf"rotary_dim={rotary_dim!r} is not supported: expected a positive"):
        config_from_hf(SMALL | {"rotary_dim": rotary_dim}, "x")


def test_a_null_rotary_dim_is_the_whole_head_only_with_one_head():
    """transformers 5.23 refuses null; 4.x's table is then n_embd wide (`rotary_dim or
    embed_dim`), one head's width only when n_head is 1, where it rotates the whole head."""
    with pytest.raises(Exception, match="rotary_dim"):  # StrictDataclassFieldValidationError
        _transformers_config(rotary_dim=None)
    with pytest.raises(ConversionError, match=r"rotary_dim=None is not supported: .* n_head is 1 \(here 4\)"):
        config_from_hf(SMALL | {"rotary_dim": None}, "x")
    one_head = config_from_hf(SMALL | {"rotary_dim": None, "n_head": 1}, "x")
    assert one_head == config_from_hf(SMALL | {"rotary_dim": 64, "n_head": 1}, "x")
    assert (one_head.rope_fraction, one_head.rope_dim) == (1.0, 64)


def test_a_rotary_dim_lmrefs_fraction_cannot_hold_is_refused():
    """30 of 44 dims: 44 * (30 / 44) is 29.999..., so the fraction would rotate 28 dims;
    transformers runs the model, lmref cannot say it."""
    data = SMALL | {"n_embd": 88, "n_head": 2, "rotary_dim": 30}
    with pytest.raises(ConversionError, match=r"rotary_dim=30 is not supported: .* rotates 28 dims"):
        config_from_hf(data, "x")


def test_a_fraction_that_does_not_count_whole_dims_is_not_written():
    """rope_fraction 0.3 of 16 dims rotates 4: rotary_dim 4 would read back as 0.25."""
    with pytest.raises(ConversionError, match=r"rope_fraction: GPT-J's rotary_dim would be 4 .* 4 / 16"):
        hf_config(tiny("gptj-6b", rope_fraction=0.3))


# --- theta ------------------------------------------------------------------------------------------

def test_transformers_rotates_with_theta_10000():
    positions, dim = np.arange(9.0), 8
    angles = positions[:, None] / 10_000.0 ** (np.arange(0, dim, 2) / dim)  # [9, 4]
    table = create_sinusoidal_positions(9, dim).double().numpy()  # [9, 8]: sin | cos
    np.testing.assert_allclose(table, np.concatenate([np.sin(angles), np.cos(angles)], axis=1), rtol=0, atol=1e-6)


def test_another_theta_is_refused_both_ways():
    assert config_from_hf(SMALL | {"rope_theta": 10_000}, "x").rope_theta == 10_000.0  # what transformers runs
    with pytest.raises(ConversionError, match="rope_theta=500000.0 is not supported: .* hard-codes theta 10000"):
        config_from_hf(SMALL | {"rope_theta": 500_000.0}, "x")
    with pytest.raises(ConversionError, match=r"rope_theta=500000.0 \(transformers' gptj has 10000.0\)"):
        hf_config(tiny("gptj-6b", rope_theta=500_000.0))


# --- the RoPE layout -----------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.25, 1.0])
def test_a_halves_config_is_written_permuted_and_transformers_computes_it(fraction, tmp_path):
    """GPT-J rotates pairs (2i, 2i+1) of a head's first rope_dim dims: a halves model's q, k
    columns i and i + rope_dim/2 go to 2i and 2i+1, the dims that pass through stay; read
    back as interleaved, the same model, which transformers runs as the golden runs halves."""
    config = tiny("gptj-6b", rope_layout="halves", rope_fraction=fraction)
    params = init_params(config, 3)
    to_hf(config, params, tmp_path)
    back_config, back_params = from_hf(tmp_path)
    assert back_config == dataclasses.replace(config, rope_layout="interleaved")
    r, hd = config.rope_dim, config.head_dim
    for name in ("wq", "wk"):
        before, after = (p[f"layers.1.attn.{name}"].reshape(config.d_model, -1, hd) for p in (params, back_params))
        assert np.array_equal(after[..., 0:r:2], before[..., : r // 2])  # [d, heads, r/2]
        assert np.array_equal(after[..., 1:r:2], before[..., r // 2 : r])
        assert np.array_equal(after[..., r:], before[..., r:])
    assert np.array_equal(back_params["layers.1.attn.wv"], params["layers.1.attn.wv"])
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 24))
    golden = impl_numpy.forward(config, params, tokens)
    assert gate(compare(transformers_float64(tmp_path, tokens).logits.numpy(), golden, F64), F64) == []
    assert np.max(np.abs(impl_numpy.forward(back_config, back_params, tokens) - golden)) < 1e-10 * np.max(golden)
    unpermuted = impl_numpy.forward(back_config, params, tokens)  # the layout matters at this size
    assert np.max(np.abs(unpermuted - golden)) > 1e-3 * np.max(np.abs(golden))


# --- checkpoints ------------------------------------------------------------------------------------

def test_old_checkpoints_hub_keys_and_mask_buffers_are_read(tmp_path):
    """Old checkpoints: each layer's `attn.bias` (the causal mask) and `attn.masked_bias`
    buffers; keys without `transformer.` (a GPTJModel's save, which transformers' loader
    prefixes too)."""
    config = case_config("gptj-6b")
    params = init_params(config, 1)
    to_hf(config, params, tmp_path)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    for i in range(config.n_layers):
        tensors |= {f"h.{i}.attn.bias": np.tril(np.ones((1, 1, 8, 8), bool)),
                    f"h.{i}.attn.masked_bias": np.array(-1e9, np.float32)}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    back = from_hf(tmp_path)[1]
    assert list(back) == list(params) and all(np.array_equal(back[k], params[k]) for k in params)


# --- refusals -------------------------------------------------------------------------------------

CONFIG_JSON_REFUSED = [
    ({"n_head": 5}, "n_head=5 is not supported: n_embd (64) must be divisible by it"),
    ({"n_head": 0}, "n_head=0 is not supported: expected a positive integer"),
    ({"n_embd": "64"}, "n_embd='64' is not supported: expected a positive integer"),
    ({"rotary": False}, "rotary=False is not supported: transformers' GPT-J always applies RoPE"),
    ({"scale_attn_weights": False}, "scale_attn_weights=False is not supported"),
    ({"activation_function": "gelu_fast"}, "activation_function='gelu_fast' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "unknown field(s) rope_scaling"),
    ({"partial_rotary_factor": 0.5}, "unknown field(s) partial_rotary_factor"),
]


@pytest.mark.parametrize("fields, named", CONFIG_JSON_REFUSED, ids=[str(f) for f, _ in CONFIG_JSON_REFUSED])
def test_a_config_json_field_gptj_does_not_run_is_named(fields, named):
    with pytest.raises(ConversionError) as info:
        config_from_hf(SMALL | fields, "x")
    assert named in str(info.value)


INEXPRESSIBLE = [
    (dict(n_kv_heads=2), "n_kv_heads: GPT-J attention is multi-head"),
    (dict(qkv_bias=True), "qkv_bias=True (transformers' gptj has False)"),
    (dict(attn_out_bias=True), "attn_out_bias=True (transformers' gptj has False)"),
    (dict(lm_head_bias=False), "lm_head_bias=False (transformers' gptj has True)"),
    (dict(shared_attn_norm=False), "shared_attn_norm=False (transformers' gptj has True)"),
    (dict(parallel_residual=False, shared_attn_norm=False), "parallel_residual=False (transformers' gptj has True)"),
    (dict(mlp="gated"), "mlp='gated' (transformers' gptj has 'plain')"),
    (dict(mlp_bias=False), "mlp_bias=False (transformers' gptj has True)"),
    (dict(rope_scaling=RopeScaling(kind="linear", factor=2.0)), "rope_scaling=RopeScaling(kind='linear'"),
    (dict(head_dim=8), "head_dim: GPT-J derives head_dim = d_model / n_heads"),
]


@pytest.mark.parametrize("changes, named", INEXPRESSIBLE, ids=[str(c) for c, _ in INEXPRESSIBLE])
def test_a_config_gptj_cannot_express_is_refused_by_name(changes, named):
    with pytest.raises(ConversionError) as info:
        hf_config(tiny("gptj-6b", **changes))
    assert named in str(info.value)
