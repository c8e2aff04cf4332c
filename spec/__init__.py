"""What a model is: the config schema, presets, the per-layer plan, the feature vocabulary,
the capture names, the parameter layout and the deterministic init.

The backends (lmref.impl_numpy, lmref.impl_torch, lmref.impl_jax, and the ONNX export and the
Hugging Face converter on top) say how to compute it; each declares which features it does.
"""

from lmref.spec.captures import capture_names
from lmref.spec.config import ConfigError, ModelConfig, MoEConfig, RopeScaling, VisionConfig
from lmref.spec.errors import InputError, ParamsError
from lmref.spec.features import FEATURES, UnsupportedFeature, check_supported, required_features
from lmref.spec.params import active_param_count, init_params, param_count, param_shapes
from lmref.spec.plan import LayerPlan, Mask, Rope, layer_plan
from lmref.spec.presets import FAMILIES, PRESETS, REGISTRY, get_preset, preset_info, resolve_archs, tiny

__all__ = [
    "ConfigError", "InputError", "ParamsError", "UnsupportedFeature", "ModelConfig", "MoEConfig", "RopeScaling",
    "VisionConfig",
    "FEATURES", "check_supported", "required_features", "capture_names",
    "LayerPlan", "Mask", "Rope", "layer_plan",
    "active_param_count", "init_params", "param_count", "param_shapes",
    "PRESETS", "REGISTRY", "FAMILIES", "get_preset", "preset_info", "resolve_archs", "tiny",
]
