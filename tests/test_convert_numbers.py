"""Numbers in a Hugging Face config.json, and weights cast on the way out, read strictly.

A RoPE parameter, a norm epsilon or a loss weight that is not a JSON number (null, a string, a
list, a boolean, NaN), a length that is not an integer (1.5), and a top-level RoPE value that a
RoPE dict contradicts (transformers 4.x and 5.x would run different models) are each refused
with a ConversionError naming config.json and the field, never a Python traceback and never
silently truncated.  `to_hf(..., dtype=)` refuses a weight the dtype cannot hold, naming the
tensor and its largest magnitude, and writes nothing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmref.conformance.cases import case_config
from lmref.convert import ConversionError, from_hf, hf_config, to_hf
from lmref.convert.dtypes import cast_weights
from lmref.spec import init_params
from lmref.spec.presets import PRESETS


def _hf_dir(tmp_path, arch: str):
    config = case_config(arch)
    to_hf(config, init_params(config, 1), tmp_path)
    return tmp_path


def _set(data: dict, path: str, value) -> None:
    """Set config.json's field `path` ("rope_parameters.factor" reaches into a dict)."""
    *parents, leaf = path.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


def _refusal(tmp_path, arch: str, edits: dict) -> str:
    """The ConversionError message of reading `arch`'s HF directory with `edits` applied."""
    directory = _hf_dir(tmp_path, arch)
    data = json.loads((directory / "config.json").read_text())
    for path, value in edits.items():
        _set(data, path, value)
    (directory / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConversionError) as info:
        from_hf(directory)
    message = str(info.value)
    assert f"{directory / 'config.json'}" in message
    return message


LLAMA3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
NUMBER, INTEGER, POSITIVE = "expected a finite number", "expected an integer", "expected a positive integer"
BAD_NUMBERS = [None, "abc", [1], True, float("nan"), float("inf")]

REFUSED = [
    *[("llama3", {"rope_parameters.rope_theta": v}, f"rope_parameters.rope_theta={v!r}", NUMBER)
      for v in BAD_NUMBERS],
    ("llama3", {"rope_theta": None, "rope_parameters": None}, "rope_theta=None", NUMBER),
    ("llama3", {"rope_theta": "abc"}, "rope_theta='abc'", NUMBER),
    *[("llama3", {"rope_parameters": {"rope_type": "linear", "factor": v}}, f"rope_parameters.factor={v!r}", NUMBER)
      for v in ("x", None)],
    *[("llama3", {"rope_parameters": LLAMA3 | {key: "x"}}, f"rope_parameters.{key}='x'", NUMBER)
      for key in ("factor", "low_freq_factor", "high_freq_factor")],
    *[("llama3", {"rope_parameters": LLAMA3 | {"original_max_position_embeddings": v}},
       f"rope_parameters.original_max_position_embeddings={v!r}", INTEGER) for v in ("x", None, 1.5, True)],
    ("llama3.1", {"rope_scaling.factor": "x"}, "rope_scaling.factor='x'", NUMBER),
    ("llama3.1", {"original_max_position_embeddings": "x"}, "original_max_position_embeddings='x'", INTEGER),
    ("gemma3-4b", {"rope_local_base_freq": "x"}, "rope_local_base_freq='x'", NUMBER),
    ("gemma3-4b", {"rope_theta": None}, "rope_theta=None", NUMBER),
    ("gemma3-4b", {"rope_parameters.full_attention.factor": "x"}, "rope_parameters.full_attention.factor='x'",
     NUMBER),
    ("dbrx", {"attn_config.rope_theta": "x"}, "attn_config.rope_theta='x'", NUMBER),
    ("dbrx", {"attn_config.clip_qkv": "x"}, "attn_config.clip_qkv='x'", NUMBER),
    ("phi-3-mini-128k", {"rope_scaling.factor": "x"}, "rope_scaling.factor='x'", NUMBER),
    ("phi-3-mini-128k", {"rope_scaling.attention_factor": "x"}, "rope_scaling.attention_factor='x'", NUMBER),
    ("phi-3-mini-128k", {"original_max_position_embeddings": 0}, "original_max_position_embeddings=0", POSITIVE),
    ("phi-3-mini-128k", {"original_max_position_embeddings": 1.5}, "original_max_position_embeddings=1.5", INTEGER),
    # sizes, read as positive integers by every model type: tests/test_convert_sizes.py
    ("phi-3-mini-128k", {"max_position_embeddings": "x"}, "max_position_embeddings='x'", POSITIVE),
    ("phi-3-mini-128k", {"sliding_window": "x"}, "sliding_window='x'", POSITIVE),
]


@pytest.mark.parametrize("arch, edits, field, why", REFUSED, ids=[f"{a}-{f}" for a, _, f, _ in REFUSED])
def test_a_rope_number_that_is_not_one_is_refused_naming_the_field(arch, edits, field, why, tmp_path):
    message = _refusal(tmp_path, arch, edits)
    assert f"{field} is not supported: {why}" in message


def test_a_top_level_theta_that_the_rope_dict_contradicts_is_refused_naming_both(tmp_path):
    """transformers 4.x rotates with the top-level rope_theta (1e4), 5.x with rope_parameters' (5e5)."""
    message = _refusal(tmp_path, "llama3", {"rope_theta": 10_000.0})
    assert "rope_theta=10000.0 is not supported: disagrees with rope_parameters.rope_theta=500000.0" in message


def test_a_top_level_original_length_that_rope_scaling_contradicts_is_refused(tmp_path):
    """transformers 5.x runs llama3 with the top-level original_max_position_embeddings, 4.x with rope_scaling's."""
    message = _refusal(tmp_path, "llama3.1", {"original_max_position_embeddings": 32})
    assert ("original_max_position_embeddings=32 is not supported: disagrees with "
            "rope_parameters.original_max_position_embeddings=64") in message


def test_an_integral_float_length_reads_as_the_integer(tmp_path):
    directory = _hf_dir(tmp_path, "llama3.1")
    data = json.loads((directory / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling"):
        data[key]["original_max_position_embeddings"] = 64.0
    (directory / "config.json").write_text(json.dumps(data))
    config, _ = from_hf(directory)
    assert config == case_config("llama3.1")
    assert type(config.rope_scaling.original_max_seq_len) is int


NUMBER_KEYS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "router_aux_loss_coef", "moe_loss_weight")
NESTED = ("text_config", "vision_config", "ffn_config")
NO_NUMBER = {"olmo"}  # OlmoLayerNorm hard-codes its epsilon: the file states none


def _number_fields(arch: str) -> list[str]:
    """The norm epsilons and loss weights the HF config of `arch` states, nested ones as "a.b"."""
    data = hf_config(case_config(arch))
    fields = [key for key in NUMBER_KEYS if key in data]
    return fields + [f"{outer}.{key}" for outer in NESTED for key in NUMBER_KEYS if key in data.get(outer, {})]


def _convertible() -> list[str]:
    archs = []
    for arch in sorted(PRESETS):
        try:
            hf_config(case_config(arch))
        except ConversionError:
            continue
        archs.append(arch)
    return archs


EPSILONS = [(arch, field) for arch in _convertible() for field in _number_fields(arch)]


@pytest.mark.parametrize("arch, field", EPSILONS, ids=[f"{a}-{f}" for a, f in EPSILONS])
@pytest.mark.parametrize("value", ["abc", None])
def test_every_norm_epsilon_and_loss_weight_must_be_a_number(arch, field, value, tmp_path):
    message = _refusal(tmp_path, arch, {field: value})
    assert f"{field.split('.', 1)[-1]}={value!r} is not supported: {NUMBER}" in message


def test_every_model_type_states_a_checked_number():
    """The list above covers every model type lmref converts whose file states such a number."""
    types = {hf_config(case_config(arch))["model_type"] for arch, _ in EPSILONS}
    assert types == {hf_config(case_config(arch))["model_type"] for arch in _convertible()} - NO_NUMBER


# --- weights cast by to_hf(dtype=) ---


def _llama_with(value: float, dtype=np.float64):
    config = case_config("llama3")
    params = {k: v.astype(dtype) for k, v in init_params(config, 1).items()}
    params["layers.0.attn.wq"][0, 0] = value
    return config, params


@pytest.mark.parametrize("value, source, target, largest", [
    (1e10, np.float64, "float16", "1e+10"), (-7e4, np.float32, "float16", "70000"),
    (1e39, np.float64, "float32", "1e+39")])
def test_a_weight_the_dtype_cannot_hold_is_refused_naming_it_and_nothing_is_written(value, source, target,
                                                                                   largest, tmp_path):
    config, params = _llama_with(value, source)
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        to_hf(config, params, out, dtype=target)
    message = str(info.value)
    assert f"tensor 'model.layers.0.self_attn.q_proj.weight' does not fit {target}" in message
    assert f"largest magnitude is {largest}" in message
    assert not out.exists()


def test_values_within_range_and_values_already_infinite_are_cast_as_numpy_does():
    """Only a finite value that would become inf is refused: an inf or NaN in the source stays."""
    tensors = {"a": np.array([65504.0, -1e-9, np.inf, np.nan]), "b": np.array([1e10], np.float32)}
    cast = cast_weights({"a": tensors["a"]}, "float16")
    np.testing.assert_array_equal(cast["a"], tensors["a"].astype(np.float16))
    assert cast_weights(tensors, "float64")["b"][0] == np.float32(1e10)  # widening: never refused
    assert cast_weights(tensors, None) is tensors


def test_a_dtype_lmref_does_not_write_is_refused_by_name():
    with pytest.raises(ConversionError, match="dtype 'bfloat16' is not one lmref writes"):
        cast_weights({"a": np.zeros(2)}, "bfloat16")
