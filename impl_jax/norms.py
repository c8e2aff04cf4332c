"""Normalisation layers (JAX twin of impl_numpy/norms.py).

LayerNorm: (x - mean) / sqrt(var + eps) * w + b with the biased variance (torch.nn.LayerNorm).
OLMo-1 uses it with neither w nor b (`OlmoLayerNorm`).
RMSNorm: x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019; HF `LlamaRMSNorm`).
Unit offset (`norm_unit_offset`, Gemma): the stored w scales as (1 + w) (transformers
`GemmaRMSNorm`: `output * (1.0 + self.weight.float())`; Google's `gemma` `RMSNorm`).
QK norm (spec/MATH.md, "QK norm"): always an RMSNorm, with a weight and no bias, of the last
axis it is given (a head's head_dim, or a whole projection).  Llama 4's "l2" QK norm
(`l2_norm`) is the RMSNorm without a weight of each q / k head, after the RoPE (transformers
`Llama4TextL2Norm`: `x.float() * rsqrt(mean(x^2) + eps)`, then `type_as`; Meta's llama-models
models/llama4/model.py `rmsnorm`).

Low precision: the statistics and the affine run in at least float32 and the result is cast
back to the input dtype (HF `LlamaRMSNorm` upcasts to float32; torch's LayerNorm kernels
accumulate bfloat16 in float32; `GemmaRMSNorm` adds the 1 to the weight in float32).
"""

from __future__ import annotations

from collections.abc import Callable

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


def _normalised(config: ModelConfig, params: dict, prefix: str, x: jax.Array,
                normalise: Callable[[jax.Array, float], jax.Array], bias: bool) -> jax.Array:
    """normalise(x) with the weight under `prefix` (as w or 1 + w) and, if `bias`, its bias."""
    y = normalise(upcast(x), config.norm_eps)
    if config.norm_weight:
        w = params[f"{prefix}.weight"].astype(y.dtype)
        y = y * (1 + w) if config.norm_unit_offset else y * w
    if bias:
        y = y + params[f"{prefix}.bias"]
    return y.astype(x.dtype)


def apply_norm(config: ModelConfig, params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """The config's norm, with the affine parameters stored under `prefix` (if it has them)."""
    normalise = layer_norm if config.norm == "layernorm" else rms_norm
    return _normalised(config, params, prefix, x, normalise, config.norm_bias)


def l2_norm(x: jax.Array, eps: float) -> jax.Array:
    """x [..., head_dim] / sqrt(mean(x^2) + eps) over the last axis, no weight (Llama 4), in at
    least float32, cast back to x's dtype."""
    return rms_norm(upcast(x), eps).astype(x.dtype)


def qk_norm(config: ModelConfig, params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """The RMSNorm of queries or keys over the last axis of x, weight `{prefix}.weight`."""
    return _normalised(config, params, prefix, x, rms_norm, bias=False)
