"""Normalisation layers (JAX twin of impl_numpy/norms.py).

LayerNorm: (x - mean) / sqrt(var + eps) * w + b with the biased variance (torch.nn.LayerNorm).
OLMo-1 uses it with neither w nor b (`OlmoLayerNorm`).
RMSNorm: x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019; HF `LlamaRMSNorm`).

Low precision: the statistics and the affine run in at least float32 and the result is cast
back to the input dtype (HF `LlamaRMSNorm` upcasts to float32; torch's LayerNorm kernels
accumulate bfloat16 in float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lmref.spec.config import ModelConfig


def upcast(x: jax.Array) -> jax.Array:
    """x in at least float32: bfloat16 -> float32; float32 and float64 stay as they are."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """Normalise the last axis to zero mean and unit (biased) variance."""
    mean = x.mean(axis=-1, keepdims=True)
    var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def rms_norm(x: jax.Array, eps: float) -> jax.Array:
    """Divide the last axis by its root mean square."""
    return x * jax.lax.rsqrt(jnp.square(x).mean(axis=-1, keepdims=True) + eps)


def apply_norm(config: ModelConfig, params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """The config's norm, with the affine parameters stored under `prefix` (if it has them)."""
    normalise = layer_norm if config.norm == "layernorm" else rms_norm
    y = normalise(upcast(x), config.norm_eps)
    if config.norm_weight:
        y = y * params[f"{prefix}.weight"]
    if config.norm_bias:
        y = y + params[f"{prefix}.bias"]
    return y.astype(x.dtype)
