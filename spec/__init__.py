"""What a model is: the config schema, presets, parameter layout and deterministic init.

The backends (impl_numpy, impl_torch, impl_jax) say how to compute it.
"""

from spec.config import ConfigError, ModelConfig, RopeScaling
from spec.errors import InputError, ParamsError
from spec.params import init_params, param_count, param_shapes
from spec.presets import PRESETS, FAMILIES, get_preset, resolve_archs, tiny

__all__ = [
    "ConfigError", "InputError", "ParamsError", "ModelConfig", "RopeScaling",
    "init_params", "param_count", "param_shapes",
    "PRESETS", "FAMILIES", "get_preset", "resolve_archs", "tiny",
]
