"""Normalisation layers (float64 golden).

LayerNorm: (x - mean) / sqrt(var + eps) * w + b with the biased variance (torch.nn.LayerNorm).
OLMo-1 uses it with neither w nor b (`OlmoLayerNorm`).
RMSNorm: x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019; HF `LlamaRMSNorm`).
Gemma's norms scale by (1 + w), w stored (`norm_unit_offset`; HF `GemmaRMSNorm`, Google's
`gemma` `RMSNorm`: `normed * (1 + scale)`).  The q/k norms (spec/MATH.md, "QK norm") are
RMSNorms with the config's eps and weight convention.
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


def scale(config: ModelConfig, params: dict, prefix: str) -> np.ndarray:
    """The multiplier of a norm's output: w, or (1 + w) with `norm_unit_offset`."""
    w = params[f"{prefix}.weight"]
    return 1.0 + w if config.norm_unit_offset else w


def apply_norm(config: ModelConfig, params: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    """The config's norm, with the affine parameters stored under `prefix` (if it has them)."""
    normalise = layer_norm if config.norm == "layernorm" else rms_norm
    y = normalise(x, config.norm_eps)
    if config.norm_weight:
        y = y * scale(config, params, prefix)
    if config.norm_bias:
        y = y + params[f"{prefix}.bias"]
    return y


def qk_norm(config: ModelConfig, params: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    """RMSNorm of the last axis of q or k (a head's hd dims, or a whole projection), weight
    under `prefix` when the config's norms have weights."""
    y = rms_norm(x, config.norm_eps)
    return y * scale(config, params, prefix) if config.norm_weight else y
