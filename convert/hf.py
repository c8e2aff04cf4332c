"""Hugging Face checkpoints <-> (ModelConfig, canonical params), with NumPy and safetensors only.

    config, params = from_hf("path/to/hf_model")          # config.json + *.safetensors
    to_hf(config, params, "path/to/out")                   # transformers' from_pretrained loads it

Model types: one module each in convert/models/ (bloom, dbrx, falcon, gemma, gemma2,
gemma3_text, gpt2, gpt_neox, gptj, llama, llama4_text, llava, mistral, mixtral, mpt, olmo,
olmo2, olmoe, phi, qwen2, qwen2_moe, qwen3, qwen3_moe).
`to_hf` writes the type the config names in `hf_model_type` (`module_for`; None:
transformers has no class for it, and the config is refused), and `from_hf` sets
`hf_model_type` from config.json's `model_type`.
Tensors keep their dtype (BF16 files come back as float32, exactly); values are only moved,
never computed, so a round trip either way gives the same bits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType

import numpy as np
from lmref.convert.dtypes import cast_weights
from lmref.convert.errors import ConversionError
from lmref.convert.fields import HFConfig
from lmref.convert.layout import (
    canonical_params,
    check_state_dict,
    expected_shapes,
    to_hf_tensor,
)
from lmref.convert.models import MODEL_TYPES
from lmref.convert.outputs import HF_KIND, claim
from lmref.convert.safetensors_io import SINGLE_FILE, read_hf_weights, tensor_headers, write_file
from lmref.spec.config import ConfigError, ModelConfig
from lmref.spec.errors import ParamsError
from lmref.spec.outputs import replace_files
from lmref.spec.params import check_params, param_shapes, tensor_count_problem

SUPPORTED_MODEL_TYPES = tuple(MODEL_TYPES)


def _supported() -> str:
    return f"supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"


def module_for(config: ModelConfig) -> ModuleType:
    """The converter module of `config.hf_model_type` (the preset states it; nothing is
    guessed from the flags).  Whether that type can express every other field is checked by
    `hf_config`."""
    model_type = config.hf_model_type
    if model_type is None:
        raise ConversionError(f"config {config.name!r} has no transformers model type (hf_model_type is None); "
                              f"{_supported()}")
    if model_type not in MODEL_TYPES:
        raise ConversionError(f"config {config.name!r}: hf_model_type {model_type!r} is not supported; {_supported()}")
    return MODEL_TYPES[model_type]


def auto_class_name(model_type: str) -> str:
    """The transformers Auto class whose `from_pretrained` loads `model_type`:
    AutoModelForCausalLM unless the type's module names another (`AUTO_CLASS`: llava's
    AutoModelForImageTextToText)."""
    return getattr(_module(model_type, "auto_class_name"), "AUTO_CLASS", "AutoModelForCausalLM")


def _module(model_type: object, where: str) -> ModuleType:
    """The converter module of a config.json's `model_type`."""
    if model_type is None:
        raise ConversionError(f"{where}: no model_type field, so not a Hugging Face config (an lmref "
                              "checkpoint is read with load_checkpoint / `lmref convert --to-hf`)")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        raise ConversionError(f"{where}: model_type {model_type!r} is not supported; {_supported()}")
    return MODEL_TYPES[model_type]


# --- lmref -> HF ------------------------------------------------------------------------------


def hf_config(config: ModelConfig) -> dict:
    """The config.json dict of `config`; ConversionError naming every field transformers
    cannot express.  `lmref_name` keeps the config's name (transformers keeps unknown keys)."""
    module = module_for(config)
    return {"model_type": module.MODEL_TYPE, "architectures": [module.ARCHITECTURE], **module.config_to_hf(config),
            "lmref_name": config.name}


def hf_state_dict(config: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The HF state dict (HF key -> array) of canonical `params`."""
    check_params(config, params)
    module = module_for(config)
    return {e.hf: to_hf_tensor(e, params) for e in module.entries(config)}


def to_hf(config: ModelConfig, params: dict[str, np.ndarray], out: str | Path, *, dtype: str | None = None,
          option: str = "out") -> Path:
    """Write `out`/config.json and `out`/model.safetensors; return `out`.

    `dtype` ("float32", "float16", "float64") casts the weights; by default they keep theirs.
    A weight the dtype cannot hold (beyond float16's 65504) raises ConversionError naming it.
    `out` must be new, empty or a directory `to_hf` wrote before (convert/outputs.py, kind
    "hf-model"); anything else raises `OutputError` naming `option` and `out`, untouched.
    """
    data = hf_config(config)  # refuse an inexpressible config before touching the disk
    tensors = hf_state_dict(config, params)
    tensors = cast_weights(tensors, dtype)  # refuses a value the dtype cannot hold, before any write
    out = claim(out, HF_KIND, option=option)
    names = {v.dtype.name for v in tensors.values()}
    data |= {"dtype": names.pop()} if len(names) == 1 else {}  # from_pretrained's dtype="auto" reads it
    replace_files(out, {  # from_pretrained requires the weights' metadata format "pt"
        SINGLE_FILE: lambda path: write_file(path, tensors, metadata={"format": "pt"}),
        "config.json": lambda path: path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")})
    return out


# --- HF -> lmref ------------------------------------------------------------------------------


def read_hf_config(path: str | Path) -> dict:
    """The config.json of an HF model directory, as a dict."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{config_path}: no such file (expected a Hugging Face model directory)")
    try:
        data = json.loads(config_path.read_text())
    except OSError as e:
        raise ConversionError(f"{config_path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # not UTF-8 (UnicodeDecodeError), not JSON, nested too deep
        raise ConversionError(f"{config_path}: not valid JSON in UTF-8 ({e})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{config_path}: expected a JSON object, got {type(data).__name__}")
    return data


# A layer's tensors, in every layout the converters read: `model.layers.3.`, GPT-2's `h.3.`, MPT's
# and DBRX's `blocks.3.`, the vision tower's `encoder.layers.3.`.
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def layers_held(directory: Path) -> int | None:
    """The most layers an HF model directory's weights can hold: one more than the largest
    layer index of its tensor names, read from the headers.  None when no name has one (nothing
    to bound) or the weights cannot be read (their error is raised where they are read, after
    the config's)."""
    try:
        names = read_hf_weights(directory, read_one=tensor_headers)
    except ConversionError:
        return None
    indices = [int(m[1]) for name in names if (m := LAYER_INDEX.search(name))]
    return max(indices) + 1 if indices else None


def config_from_hf(data: dict, name: str, where: str = "config.json", held: int | None = None) -> ModelConfig:
    """A config.json dict -> ModelConfig (its `hf_model_type` is the dict's `model_type`);
    ConversionError naming any field lmref cannot represent.  `held` (layers_held of the
    weights): a layer count above it is refused as it is read."""
    module = _module(data.get("model_type"), where)
    cfg = HFConfig(data, f"{where} ({module.MODEL_TYPE})", module.IGNORED, layers_held=held)
    try:
        config = module.config_from_hf(cfg, data.get("lmref_name") or name)
    except ConfigError as e:
        raise ConversionError(f"{where} ({module.MODEL_TYPE}): gives an invalid lmref config: {e}") from None
    cfg.finish()
    return config


def hf_key(module: ModuleType, key: str, expected: set[str]) -> str:
    """The key of the layout lmref writes for a file's `key`: itself when expected, else the
    type's other spellings (`KEY_ALIASES`, (regex, replacement) pairs applied in turn: llava's
    in-memory `model.language_model.*` for the Hub's `language_model.model.*`), else with the
    base-model prefix that some files omit (hub GPT-2: `h.0...` for `transformer.h.0...`;
    transformers' loader does the same)."""
    if key in expected:
        return key
    for pattern, replacement in getattr(module, "KEY_ALIASES", ()):
        key = re.sub(pattern, replacement, key)
    return module.PREFIX + key if key not in expected and module.PREFIX + key in expected else key


def _normalise_keys(module: ModuleType, config: ModelConfig, tensors: dict, where: str) -> dict:
    """Bring the keys to the layout lmref writes (`hf_key`), refusing two that name the same
    tensor, drop known non-weight buffers, and drop a stored copy of a tied head (`HEAD`,
    "lm_head.weight" unless the type says otherwise) after checking it equals the embedding."""
    expected = {e.hf for e in module.entries(config)}
    out, source = {}, {}
    for key, value in tensors.items():
        if key.endswith(module.IGNORED_SUFFIXES):
            continue
        renamed = hf_key(module, key, expected)
        if renamed in out:
            raise ConversionError(f"{where}: {source[renamed]!r} and {key!r} are both the tensor {renamed!r}")
        out[renamed], source[renamed] = value, key
    head = getattr(module, "HEAD", "lm_head.weight")
    if config.tie_embeddings and head in out:
        embed = next(e.hf for e in module.entries(config) if e.sources == ("embed.tokens",))
        if embed in out and not np.array_equal(out[head], out[embed]):
            raise ConversionError(f"{where}: tie_word_embeddings is true but {head} differs from {embed}")
        del out[head]
    return out


def params_from_hf(config: ModelConfig, model_type: str, tensors: dict[str, np.ndarray],
                   where: str = "state dict") -> dict[str, np.ndarray]:
    """An HF state dict -> canonical params; ConversionError listing missing, unexpected and
    misshaped keys (each misshaped key with both shapes)."""
    module = _module(model_type, where)
    if problem := tensor_count_problem(config, len(tensors)):  # before the per-layer tables are built
        raise ConversionError(f"{where}: the weights do not match the config: {problem}")
    tensors = _normalise_keys(module, config, tensors, where)
    table = module.entries(config)
    shapes = param_shapes(config)
    check_state_dict(expected_shapes(table, shapes), tensors, where)
    params = canonical_params(table, tensors, shapes)
    try:
        check_params(config, params)
    except ParamsError as e:  # a table that misses a canonical tensor: a converter bug
        raise ConversionError(f"{where}: {e}") from None
    return {name: params[name] for name in shapes}  # canonical order


def from_hf(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read an HF model directory (config.json + model.safetensors or sharded safetensors)."""
    path = Path(path)
    data = read_hf_config(path)
    config = config_from_hf(data, path.resolve().name, str(path / "config.json"), layers_held(path))
    params = params_from_hf(config, data["model_type"], read_hf_weights(path), str(path))
    return config, params
