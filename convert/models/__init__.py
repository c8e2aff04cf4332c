"""One module per transformers model type (`MODEL_TYPE`), found here by name: adding a type is
adding its module.  Each module says how its config.json maps to a ModelConfig
(`config_from_hf`, `config_to_hf`), which tensors its state dict holds (`entries`, see
convert/layout.py), which features its class expresses (`FEATURES`) and where its layers'
outputs are (`LAYER_MODULES`, for `--impl hf` capture; a mixture of experts' router and
experts too, for its routing).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def _discover() -> dict[str, ModuleType]:
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)]
    return {m.MODEL_TYPE: m for m in sorted(modules, key=lambda m: m.__name__)}


MODEL_TYPES: dict[str, ModuleType] = _discover()
