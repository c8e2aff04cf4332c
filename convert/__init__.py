"""Checkpoint conversion between Hugging Face transformers and lmref, with NumPy and safetensors.

    from lmref.convert import from_hf, to_hf, save_checkpoint, load_checkpoint
    config, params = from_hf("hf_dir")             # HF config.json + safetensors -> lmref
    to_hf(config, params, "hf_out")                 # -> a directory from_pretrained loads
    save_checkpoint("ckpt", config, params)         # the lmref checkpoint (convert/checkpoint.py)
    config, params = load_checkpoint("ckpt")

Supported transformers model types: one module each in convert/models/ (`SUPPORTED_MODEL_TYPES`); a
ModelConfig names its own in `hf_model_type` (None: transformers has no class for it).  A
config value that lmref cannot represent, or a ModelConfig that transformers cannot express,
raises `ConversionError` naming the field.  `convert.hf_adapter.HFAdapter` (needs torch and
transformers) runs transformers itself in the conformance suite: `--impl hf`.
"""

from lmref.convert.checkpoint import load_checkpoint, save_checkpoint
from lmref.convert.errors import CheckpointError, ConversionError
from lmref.convert.hf import (
    SUPPORTED_MODEL_TYPES,
    config_from_hf,
    from_hf,
    hf_config,
    hf_state_dict,
    module_for,
    params_from_hf,
    read_hf_config,
    to_hf,
)

__all__ = [
    "CheckpointError", "ConversionError", "SUPPORTED_MODEL_TYPES",
    "config_from_hf", "from_hf", "hf_config", "hf_state_dict", "load_checkpoint",
    "module_for", "params_from_hf", "read_hf_config", "save_checkpoint", "to_hf",
]
