"""Checkpoint conversion without transformers: lmref -> HF -> lmref round trips are exact, the
file layouts transformers reads and writes (hub-style keys, shards, BF16, legacy config
fields) are understood, and the lmref checkpoint format round-trips.

tests/test_hf_transformers.py checks the same conversions against transformers itself."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lmref import impl_numpy
from lmref.conformance.cases import case_config
from lmref.convert import SUPPORTED_MODEL_TYPES, config_from_hf, from_hf, load_checkpoint, save_checkpoint, to_hf
from lmref.convert.errors import ConversionError
from lmref.convert.hf import hf_config
from lmref.convert.features import FEATURES, FEATURES_BY_TYPE
from lmref.spec import PRESETS, init_params, required_features, tiny
from lmref.spec.features import OBJECTIVE

from tests.hf_configs import CONFIGS, OTHER_LAYOUT, SUPPORTED_ARCHS


def assert_same_params(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_lmref_to_hf_to_lmref_is_exact(key, dtype, tmp_path):
    config = CONFIGS[key]
    params = {k: v.astype(dtype) for k, v in init_params(config, 7).items()}
    to_hf(config, params, tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["dtype"] == dtype and data["model_type"] == config.hf_model_type
    back_config, back_params = from_hf(tmp_path)
    assert back_config == config
    assert_same_params(back_params, params)


def test_features_are_declared_for_every_supported_model_type():
    assert list(FEATURES_BY_TYPE) == list(SUPPORTED_MODEL_TYPES)
    assert frozenset().union(*FEATURES_BY_TYPE.values()) == FEATURES


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_each_convertible_config_needs_only_features_its_type_declares(key):
    """Up to the training objective, which config.json keeps under lmref's keys where the
    type's loss is another (convert/moe.py): DBRX's and OLMoE's presets."""
    config = CONFIGS[key]
    assert required_features(config) - set(OBJECTIVE) <= FEATURES_BY_TYPE[config.hf_model_type]


def test_every_preset_names_a_supported_type_or_none():
    """A preset's hf_model_type is a type convert/models/ has (olmo-alibi and PaLM have none)."""
    assert {PRESETS[n].hf_model_type for n in SUPPORTED_ARCHS} <= set(FEATURES_BY_TYPE)
    assert not {"olmo-alibi", "palm-8b", "palm-62b", "palm-540b"} & set(SUPPORTED_ARCHS)


# LlavaConfig's default image token (32000) lies outside LlamaConfig's default vocabulary of
# 32000 ids, which lmref refuses (tests/test_hf_llava.py): llava's minimal file gives llava-hf's 32064.
MINIMAL = {"llava": {"text_config": {"vocab_size": 32064}}}


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_from_hf_sets_hf_model_type_from_model_type(model_type):
    """A config.json of transformers' class defaults (only model_type given)."""
    data = {"model_type": model_type, **MINIMAL.get(model_type, {})}
    assert config_from_hf(data, "defaults").hf_model_type == model_type


@pytest.mark.parametrize("key", sorted(OTHER_LAYOUT))
def test_the_other_rope_layout_is_exported_permuted_and_computes_the_same(key, tmp_path):
    """transformers rotates halves (Llama 4: interleaved pairs); a model in the other layout is
    exported with q, k columns (and the q/k norm weights) permuted."""
    config = OTHER_LAYOUT[key]
    params = init_params(config, 3)
    to_hf(config, params, tmp_path)
    back_config, back_params = from_hf(tmp_path)
    other = {"interleaved": "halves", "halves": "interleaved"}[config.rope_layout]
    assert back_config == dataclasses.replace(config, rope_layout=other)
    assert not np.array_equal(back_params["layers.0.attn.wq"], params["layers.0.attn.wq"])
    assert np.array_equal(back_params["layers.0.attn.wv"], params["layers.0.attn.wv"])
    tokens = np.arange(2 * 9).reshape(2, 9) * 13 % config.vocab_size
    expected = impl_numpy.forward(config, params, tokens)
    got = impl_numpy.forward(back_config, back_params, tokens)
    assert np.max(np.abs(got - expected)) < 1e-10 * np.max(np.abs(expected))


def _rewrite_weights(directory, edit) -> None:
    tensors = load_file(directory / "model.safetensors")
    save_file(edit(tensors), str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_hub_style_gpt2_keys_without_prefix_and_with_mask_buffers(tmp_path):
    """openai-community/gpt2's file: keys `h.0.attn.c_attn.weight`, plus `h.{i}.attn.bias` buffers."""
    config = case_config("gpt2")
    params = init_params(config, 1)
    to_hf(config, params, tmp_path)

    def hub_style(tensors):
        renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        mask = np.tril(np.ones((1, 1, 8, 8), np.float32))
        return renamed | {f"h.{i}.attn.bias": mask for i in range(config.n_layers)}

    _rewrite_weights(tmp_path, hub_style)
    assert_same_params(from_hf(tmp_path)[1], params)


def test_a_stored_copy_of_a_tied_head_is_accepted_when_equal(tmp_path):
    config = tiny("olmo")  # tied
    params = init_params(config, 1)
    to_hf(config, params, tmp_path)
    _rewrite_weights(tmp_path, lambda t: t | {"lm_head.weight": t["model.embed_tokens.weight"].copy()})
    assert_same_params(from_hf(tmp_path)[1], params)


def test_sharded_checkpoint_with_an_index(tmp_path):
    config = case_config("llama3")
    params = init_params(config, 2)
    to_hf(config, params, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same_params(from_hf(tmp_path)[1], params)


def _write_bf16_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file with BF16 tensors (the top 16 bits of float32 values that fit)."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        raw = (value.astype(np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))


def test_bf16_weights_are_widened_to_float32_exactly(tmp_path):
    config = case_config("llama2")
    params = init_params(config, 4)
    # values representable in bfloat16: float32 with the low 16 bits cleared
    params = {k: (v.astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in params.items()}
    to_hf(config, params, tmp_path)
    _write_bf16_safetensors(tmp_path / "model.safetensors", load_file(tmp_path / "model.safetensors"))
    assert_same_params(from_hf(tmp_path)[1], params)


def test_legacy_rope_fields_read_like_rope_parameters(tmp_path):
    """Pre-5.x config.json: top-level rope_theta and rope_scaling {"type": ...} (Llama-3.1's hub file)."""
    config = case_config("llama3.1")
    to_hf(config, init_params(config, 1), tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    rope = data.pop("rope_parameters")
    data["rope_theta"] = rope.pop("rope_theta")
    data["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert from_hf(tmp_path)[0] == config


def test_name_falls_back_to_the_directory_name(tmp_path):
    config = case_config("mpt")
    out = tmp_path / "my-mpt"
    to_hf(config, init_params(config, 1), out)
    data = json.loads((out / "config.json").read_text())
    del data["lmref_name"]
    (out / "config.json").write_text(json.dumps(data))
    assert from_hf(out)[0] == dataclasses.replace(config, name="my-mpt")


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_lmref_checkpoint_round_trip(dtype, tmp_path):
    config = case_config("llama3.1")
    params = {k: v.astype(dtype) for k, v in init_params(config, 5).items()}
    save_checkpoint(tmp_path, config, params)
    # the marker claims the directory as an lmref checkpoint (issue 10, item 4; spec/outputs.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lmref-output.json", "config.json", "params.safetensors"]
    back_config, back_params = load_checkpoint(tmp_path)
    assert back_config == config
    assert_same_params(back_params, params)


def test_mistral_without_a_window_writes_null_not_the_class_default(tmp_path):
    """MistralConfig.sliding_window defaults to 4096: a windowless model must say null, or
    transformers would slide where lmref does not (and no case shorter than 4096 would see it)."""
    config = case_config("mistral-7b-v0.3")
    to_hf(config, init_params(config, 0), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["sliding_window"] is None
    assert from_hf(tmp_path)[0].attn_pattern == ("global",)
    defaults = config_from_hf({"model_type": "mistral"}, "defaults")
    assert (defaults.attn_pattern, defaults.sliding_window) == (("sliding",), 4096)


def test_mistral_refuses_a_window_on_some_layers_only():
    config = tiny("mistral-7b", attn_pattern=("sliding", "global"))
    with pytest.raises(ConversionError, match=r"Mistral's window is on every layer or on none"):
        hf_config(config)
