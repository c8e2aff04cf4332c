"""Bad input to the converters: every error names the field, key or file and what is wrong."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lmref.conformance.cases import case_config
from lmref.convert import (
    SUPPORTED_MODEL_TYPES,
    CheckpointError,
    ConversionError,
    from_hf,
    hf_config,
    hf_state_dict,
    load_checkpoint,
    save_checkpoint,
    to_hf,
)
from lmref.spec import MoEConfig, RopeScaling, init_params, tiny


def _hf_dir(tmp_path, arch: str):
    config = case_config(arch)
    to_hf(config, init_params(config, 1), tmp_path)
    return tmp_path


def _edit_config(directory, edit) -> None:
    data = json.loads((directory / "config.json").read_text())
    edit(data)
    (directory / "config.json").write_text(json.dumps(data))


def _edit_weights(directory, edit) -> None:
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_unsupported_model_type_names_it_and_lists_the_supported(tmp_path):
    _edit_config(_hf_dir(tmp_path, "gpt2"), lambda d: d.update(model_type="rwkv"))
    with pytest.raises(ConversionError) as info:
        from_hf(tmp_path)
    message = str(info.value)
    assert "'rwkv'" in message and "config.json" in message
    assert all(t in message for t in SUPPORTED_MODEL_TYPES)


def test_a_config_without_model_type_is_not_a_hf_config(tmp_path):
    config = case_config("llama3")
    save_checkpoint(tmp_path, config, init_params(config, 1))
    with pytest.raises(ConversionError, match="no model_type field.*--to-hf"):
        from_hf(tmp_path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    def edit(t):
        del t["model.layers.0.self_attn.k_proj.weight"], t["model.norm.weight"]
        t["model.layers.0.self_attn.extra.weight"] = np.zeros(3, np.float64)

    _edit_weights(_hf_dir(tmp_path, "llama3"), edit)
    with pytest.raises(ConversionError) as info:
        from_hf(tmp_path)
    message = str(info.value)
    assert "missing 2 key(s): model.layers.0.self_attn.k_proj.weight, model.norm.weight" in message
    assert "unexpected 1 key(s): model.layers.0.self_attn.extra.weight" in message


def test_a_misshaped_tensor_names_the_key_and_both_shapes(tmp_path):
    key = "transformer.blocks.1.attn.Wqkv.weight"  # mpt case: d_model 96, so [288, 96]
    _edit_weights(_hf_dir(tmp_path, "mpt"), lambda t: t.update({key: np.zeros((96, 288))}))
    with pytest.raises(ConversionError, match=rf"{key}: expected \(288, 96\), got \(96, 288\)"):
        from_hf(tmp_path)


def test_a_tied_head_that_differs_from_the_embedding_is_refused(tmp_path):
    _edit_weights(_hf_dir(tmp_path, "gpt2"), lambda t: t.update({"lm_head.weight": t["transformer.wte.weight"] + 1}))
    with pytest.raises(ConversionError, match="tie_word_embeddings is true but lm_head.weight differs"):
        from_hf(tmp_path)


def _set(path: str, value):
    """An edit that sets config.json's field `path` ("attn_config.qk_ln" reaches into a dict)."""
    def edit(data):
        *parents, leaf = path.split(".")
        for p in parents:
            data = data.setdefault(p, {})
        data[leaf] = value
    return edit


UNREPRESENTABLE = [
    ("llama3", "rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5},
     "rope_parameters.rope_type='yarn'"),
    ("llama3", "rope_parameters", {"rope_type": "dynamic", "factor": 2.0}, "'dynamic'"),
    ("llama3", "rope_parameters.partial_rotary_factor", 0.5, "partial_rotary_factor=0.5"),
    ("llama3.1", "rope_parameters.truncate", False, "rope_parameters.truncate=False"),
    ("llama3", "rope_scaling", {"type": "dynamic", "factor": 2.0}, "rope_scaling.rope_type='dynamic'"),
    # both keys read, each its own model: transformers 4.x would run theta 1e4, 5.x theta 5e5
    ("llama3.1", "rope_scaling.rope_theta", 10_000.0, "rope_scaling={"),
    ("llama3", "quantization_config", {"quant_method": "gptq"}, "unknown field(s) quantization_config"),
    ("llama3", "hidden_act", "gelu_fast", "hidden_act='gelu_fast'"),
    ("gpt2", "scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx=True"),
    ("gpt2", "scale_attn_weights", False, "scale_attn_weights=False"),
    ("gpt2", "add_cross_attention", True, "add_cross_attention=True"),
    ("olmo", "head_dim", 0, "head_dim=0"),
    ("mpt", "attn_config.qk_ln", True, "attn_config.qk_ln=True"),
    ("mpt", "attn_config.alibi", False, "attn_config.alibi=False"),
    ("mpt", "attn_config.alibi_bias_max", 16, "attn_config.alibi_bias_max=16"),
    ("mpt", "attn_config.attn_type", "multiquery_attention", "attn_config.attn_type='multiquery_attention'"),
    # 1 / 0.3^2 = 11.1: no whole-number query_scale_dim gives it (0.1, 100^-0.5, converts)
    ("mpt", "attn_config.softmax_scale", 0.3, "attn_config.softmax_scale=0.3"),
    ("mpt", "attn_config.softmax_scale", 1e-200, "attn_config.softmax_scale=1e-200"),  # 1 / scale^2 overflows
    ("mpt", "attn_config.softmax_scale", -0.125, "attn_config.softmax_scale=-0.125"),
    ("mpt", "attn_config.prefix_lm", True, "attn_config.prefix_lm=True"),
    ("mpt", "attn_config.rope", True, "unknown field(s) attn_config.rope"),
    ("mpt", "expansion_ratio", 2, "expansion_ratio=2"),
    ("mpt", "no_bias", False, "no_bias=False"),
    ("mpt", "logit_scale", 0.5, "logit_scale=0.5"),
    ("mpt", "norm_type", "rmsnorm", "norm_type='rmsnorm'"),
    # a file whose sliding layers have no window: use_sliding_window false drops it (Qwen2Config)
    ("qwen2-7b", "layer_types", ["sliding_attention", "full_attention"], "names sliding_attention layers but"),
    ("qwen3-8b", "layer_types", ["full_attention"], "layer_types=['full_attention'] is not supported: expected a list"),
    ("gemma2-9b", "layer_types", ["sliding_attention", "chunked_attention"],
     "each full_attention or sliding_attention"),
    ("olmo2-7b", "clip_qkv", 1.0, "unknown field(s) clip_qkv"),
    ("gemma-7b", "use_bidirectional_attention", True, "use_bidirectional_attention=True"),
    # transformers 5.x runs hidden_act (tanh here), some 4.x releases ran hidden_activation (exact here)
    ("gemma-7b", "hidden_activation", "gelu", "hidden_activation='gelu' is not supported: differs from hidden_act"),
    # transformers' gemma3_text ignores it, Google's gemma applies it
    ("gemma3-4b", "attn_logit_softcapping", 50.0, "attn_logit_softcapping=50.0"),
    ("gemma3-4b", "rope_parameters.sliding_attention", {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
     "rope_parameters.sliding_attention.rope_type='linear'"),
    # 4.x reads rope_local_base_freq, 5.x rope_parameters: two models
    ("gemma3-4b", "rope_local_base_freq", 50_000.0, "disagrees with rope_theta, rope_scaling and rope_local_base_freq"),
    ("gemma3-4b", "rope_parameters", {"rope_type": "default", "rope_theta": 1e6}, "expected one entry per layer type"),
    # a flag is JSON true or false: the string "false" is true to Python and was read as a parallel
    # residual, renormalised routing, a tied head (transformers 5.x refuses it)
    ("gpt-neox-20b", "use_parallel_residual", "false", "use_parallel_residual='false' is not supported: expected true"),
    ("qwen2-57b-a14b", "norm_topk_prob", "false", "norm_topk_prob='false' is not supported: expected true or false"),
    ("olmoe-1b-7b", "norm_topk_prob", 0, "norm_topk_prob=0 is not supported: expected true or false"),
    ("llama3", "tie_word_embeddings", "true", "tie_word_embeddings='true' is not supported: expected true or false"),
    ("llama3", "attention_bias", None, "attention_bias=None is not supported: expected true or false"),
    # a list where a name goes: named, not an unhashable-type traceback
    ("llama3", "hidden_act", ["silu"], "hidden_act=['silu'] is not supported"),
    ("llama3", "model_type", ["llama"], "model_type ['llama'] is not supported"),
]


@pytest.mark.parametrize("arch, field, value, named", UNREPRESENTABLE,
                         ids=[f"{a}-{f}" for a, f, _, _ in UNREPRESENTABLE])
def test_an_unrepresentable_config_field_is_named(arch, field, value, named, tmp_path):
    _edit_config(_hf_dir(tmp_path, arch), _set(field, value))
    with pytest.raises(ConversionError) as info:
        from_hf(tmp_path)
    assert named in str(info.value)


INEXPRESSIBLE = {
    "olmo-alibi": (case_config("olmo-alibi"), ["config 'olmo-alibi-tiny' has no transformers model type",
                                               "(hf_model_type is None)", *SUPPORTED_MODEL_TYPES]),
    # the type named is the one checked, whatever the flags say
    "olmo-alibi-as-mpt": (dataclasses.replace(case_config("olmo-alibi"), hf_model_type="mpt"),
                          ["transformers' mpt", "norm_bias=True", "mlp='gated'", "activation='silu'"]),
    "olmo-alibi-as-olmo": (dataclasses.replace(case_config("olmo-alibi"), hf_model_type="olmo"),
                           ["transformers' olmo", "position='alibi' (transformers' olmo has 'rope')",
                            "norm_weight=True", "norm_bias=True"]),
    "llama-as-gpt2": (tiny("llama3", hf_model_type="gpt2"),
                      ["transformers' gpt2", "position='rope'", "norm='rmsnorm'", "mlp='gated'"]),
    "unknown-type": (tiny("gpt2", hf_model_type="rwkv"),
                     ["hf_model_type 'rwkv' is not supported", *SUPPORTED_MODEL_TYPES]),
    "llama-moe": (tiny("llama3", mlp_pattern=("moe",), moe=MoEConfig(n_experts=4, n_experts_per_token=2)),
                  ["moe=MoEConfig(n_experts=4", "(transformers' llama has None)", "mlp_pattern=('moe',)"]),
    "llama-yarn": (tiny("llama3", rope_scaling=RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=64)),
                   ["rope_scaling: kind 'yarn' is not converted"]),
    "gpt2-gqa": (tiny("gpt2", n_kv_heads=2), ["n_kv_heads: GPT-2 attention is multi-head"]),
    "mpt-alibi-bias-4": (tiny("mpt", alibi_max_bias=4.0), ["alibi_max_bias=4.0 (transformers' mpt has 8.0)"]),
    "mpt-narrow-mlp": (tiny("mpt", d_ff=100), ["d_ff: transformers' MptMLP is 4 * d_model"]),
    "llama-qkv-bias-only": (tiny("llama3", qkv_bias=True), ["attn_out_bias: transformers' attention_bias"]),
    "llama-partial-rope": (tiny("llama3", rope_fraction=0.5), ["rope_fraction=0.5"]),
    "olmo-eps": (tiny("olmo", norm_eps=1e-6), ["norm_eps=1e-06 (transformers' olmo has 1e-05)"]),
    "qwen2-without-qkv-bias": (tiny("qwen2-7b", qkv_bias=False), ["qkv_bias=False (transformers' qwen2 has True)"]),
    "qwen2-o-bias": (tiny("qwen2-7b", attn_out_bias=True), ["attn_out_bias=True (transformers' qwen2 has False)"]),
    "qwen3-qkv-bias-only": (tiny("qwen3-8b", qkv_bias=True), ["attn_out_bias: transformers' attention_bias"]),
    "qwen2-chunked": (tiny("qwen2-7b", attn_pattern=("chunked",), attn_chunk_size=4),
                      ["attn_pattern: transformers' layer_types name full_attention and sliding_attention"]),
    "olmo2-pre-norm": (tiny("olmo2-7b", norm_placement="pre"),
                       ["norm_placement='pre' (transformers' olmo2 has 'post_sublayer')"]),
    # a Gemma checkpoint stores the w of (1 + w): a plain RMSNorm weight cannot be written as one
    "gemma-plain-norm-weights": (tiny("gemma-2b", norm_unit_offset=False),
                                 ["norm_unit_offset: a Gemma checkpoint stores the w of its (1 + w) norms"]),
    "gemma-exact-gelu": (tiny("gemma-7b", activation="gelu"), ["GemmaConfig rewrites hidden_act 'gelu'"]),
    "gemma2-heads-not-dividing-d_model": (tiny("gemma2-9b", d_model=58),
                                          ["transformers requires d_model (58) divisible by n_heads (4)"]),
    "llama-as-gemma2": (tiny("llama3", hf_model_type="gemma2"),
                        ["norm_unit_offset: a Gemma checkpoint", "embedding_scale='none'", "norm_placement='pre'"]),
    "gemma3-attn-softcap": (tiny("gemma3-4b", attn_softcap=50.0),
                            ["attn_softcap: transformers' gemma3_text ignores attn_logit_softcapping"]),
    "gemma3-scaled-sliding-layers": (tiny("gemma3-4b", rope_theta_local=None),
                                     ["rope_theta_local: without it lmref's sliding layers take rope_scaling too"]),
}


@pytest.mark.parametrize("key", sorted(INEXPRESSIBLE))
def test_a_config_transformers_cannot_express_is_refused_before_writing(key, tmp_path):
    config, named = INEXPRESSIBLE[key]
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        to_hf(config, init_params(config, 1), out)
    assert all(n in str(info.value) for n in named), str(info.value)
    assert not out.exists()


@pytest.mark.parametrize("convert", [hf_config, lambda c: hf_state_dict(c, init_params(c, 1))],
                         ids=["hf_config", "hf_state_dict"])
def test_the_model_type_is_never_guessed_from_the_flags(convert):
    """LLaMA 3's flags are transformers' llama; without hf_model_type the config is still refused."""
    with pytest.raises(ConversionError) as info:
        convert(tiny("llama3", hf_model_type=None))
    assert "config 'llama3-tiny' has no transformers model type (hf_model_type is None)" in str(info.value)
    assert all(t in str(info.value) for t in SUPPORTED_MODEL_TYPES)


def test_params_that_do_not_fit_the_config_are_refused_on_export(tmp_path):
    config = case_config("gpt2")
    params = init_params(config, 1)
    params["layers.0.attn.wq"] = params["layers.0.attn.wq"][:, :3]
    with pytest.raises(ValueError, match=r"layers.0.attn.wq: expected \(64, 64\), got \(64, 3\)"):
        to_hf(config, params, tmp_path)


def test_pickled_weights_are_never_loaded(tmp_path):
    _hf_dir(tmp_path, "gpt2")
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ConversionError, match="pytorch_model.bin are pickled and never loaded"):
        from_hf(tmp_path)


def test_a_corrupted_safetensors_file_names_the_file(tmp_path):
    _hf_dir(tmp_path, "gpt2")
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ConversionError, match="model.safetensors: not a readable safetensors file"):
        from_hf(tmp_path)


def test_a_shard_holding_keys_its_index_does_not_map_is_refused(tmp_path):
    _hf_dir(tmp_path, "gpt2")
    (tmp_path / "model.safetensors").rename(tmp_path / "shard-1.safetensors")
    index = {"weight_map": {"transformer.wte.weight": "shard-1.safetensors"}}  # the other keys unmapped
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="shard-1.safetensors: holds transformer.h.0.attn.c_attn.bias, "
                                              "which model.safetensors.index.json maps to None"):
        from_hf(tmp_path)


def test_missing_config_json(tmp_path):
    with pytest.raises(ConversionError, match="config.json: no such file"):
        from_hf(tmp_path)


def test_a_config_json_that_is_not_json_in_utf8_names_the_file(tmp_path):
    """UTF-16 (PowerShell's `echo > config.json`), cut short, or nested past the recursion limit."""
    for data in ('{"model_type": "gpt2"}'.encode("utf-16"), b'{"model_type": "gp', b"[" * 100_000):
        (tmp_path / "config.json").write_bytes(data)
        with pytest.raises(ConversionError, match="config.json: not valid JSON in UTF-8"):
            from_hf(tmp_path)


def test_a_shard_index_that_is_not_json_in_utf8_names_the_file(tmp_path):
    hf = _hf_dir(tmp_path, "gpt2")
    (hf / "model.safetensors").rename(hf / "model-00001-of-00001.safetensors")
    for data in ('{"weight_map": {}}'.encode("utf-16"), b"[" * 100_000):
        (hf / "model.safetensors.index.json").write_bytes(data)
        with pytest.raises(ConversionError, match="model.safetensors.index.json: not a safetensors index"):
            from_hf(hf)


def test_a_hf_directory_is_not_an_lmref_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="params.safetensors: no such file"):
        load_checkpoint(_hf_dir(tmp_path, "gpt2"))


def test_a_checkpoint_with_foreign_metadata_is_refused(tmp_path):
    config = case_config("gpt2")
    save_checkpoint(tmp_path, config, init_params(config, 1))
    save_file(load_file(tmp_path / "params.safetensors"), str(tmp_path / "params.safetensors"))
    with pytest.raises(CheckpointError, match="not an lmref checkpoint of format version 1"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_whose_params_do_not_fit_its_config(tmp_path):
    config = case_config("gpt2")
    save_checkpoint(tmp_path, config, init_params(config, 1))
    bigger = dataclasses.replace(config, d_ff=2 * config.d_ff)
    (tmp_path / "config.json").write_text(bigger.to_json())
    with pytest.raises(CheckpointError, match=r"layers.0.mlp.w_up: expected \(64, 512\), got \(64, 256\)"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_with_an_invalid_config(tmp_path):
    config = case_config("gpt2")
    save_checkpoint(tmp_path, config, init_params(config, 1))
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict() | {"n_kv_heads": 3}))
    with pytest.raises(CheckpointError, match="not a valid lmref config.*n_kv_heads"):
        load_checkpoint(tmp_path)


def test_a_tensor_of_a_dtype_numpy_lacks_is_named_and_verify_refuses_integer_weights(tmp_path, capsys):
    """An FP8 tensor (F8_E4M3, what FP8 Hub checkpoints hold) was an AttributeError traceback in
    both commands; verify cast an integer weight to float64 where convert refuses it."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    from lmref.cli import main

    directory = _hf_dir(tmp_path, "llama3")
    tensors = load_file(directory / "model.safetensors")
    name = "model.norm.weight"
    for dtype, label in ((torch.float8_e4m3fn, "F8_E4M3"), (torch.int32, "I32")):
        tensors_now = {k: torch.from_numpy(v) for k, v in tensors.items()} | {
            name: torch.from_numpy(tensors[name]).to(dtype)}
        save_torch(tensors_now, str(directory / "model.safetensors"), metadata={"format": "pt"})
        capsys.readouterr()
        assert main(["verify", "--hf-dir", str(directory), "--impl", "numpy"]) == 2
        err = capsys.readouterr().err
        assert f"tensor {name} is {label}, which lmref does not read" in err, err
        if label == "F8_E4M3":
            with pytest.raises(ConversionError, match=f"tensor {name} is F8_E4M3, which lmref does not read"):
                from_hf(directory)
