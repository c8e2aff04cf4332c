"""Normalisation layers (float64 golden).

LayerNorm: (x - mean) / sqrt(var + eps) * w + b with the biased variance (torch.nn.LayerNorm).
OLMo-1 uses it with neither w nor b (`OlmoLayerNorm`).
RMSNorm: x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019; HF `LlamaRMSNorm`).
"""

from __future__ import annotations

import numpy as np

from lmref.spec.config import ModelConfig


def layer_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """Normalise the last axis to zero mean and unit (biased) variance."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def rms_norm(x: np.ndarray, eps: float) -> np.ndarray:
    """Divide the last axis by its root mean square."""
    return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + eps)


def apply_norm(config: ModelConfig, params: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    """The config's norm, with the affine parameters stored under `prefix` (if it has them)."""
    normalise = layer_norm if config.norm == "layernorm" else rms_norm
    y = normalise(x, config.norm_eps)
    if config.norm_weight:
        y = y * params[f"{prefix}.weight"]
    if config.norm_bias:
        y = y + params[f"{prefix}.bias"]
    return y
