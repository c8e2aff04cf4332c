"""Activations and the feed-forward block (JAX twin of impl_numpy/mlp.py).

plain: down(act(x @ w_up + b_up)) (GPT-2's c_fc / c_proj).
gated: down(act(x @ w_gate) * (x @ w_up)) (Shazeer 2020, "GLU Variants": SwiGLU with silu,
GeGLU with gelu; HF `LlamaMLP`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lmref.spec.config import ModelConfig


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016; torch `gelu`)."""
    return jax.nn.gelu(x, approximate=False)


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GPT-2's tanh GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (HF `gelu_new`)."""
    return jax.nn.gelu(x, approximate=True)


def gelu_tanh_truncated(x: jax.Array) -> jax.Array:
    """BLOOM's tanh GELU, sqrt(2/pi) written 0.79788456 (Megatron-DeepSpeed's fused `bias_gelu`,
    megatron/model/fused_bias_gelu.py; transformers `bloom_gelu_forward`)."""
    return 0.5 * x * (1.0 + jnp.tanh(0.79788456 * (x + 0.044715 * x**3)))


def silu(x: jax.Array) -> jax.Array:
    """x * sigmoid(x)."""
    return jax.nn.silu(x)


def relu(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0)


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's x * sigmoid(1.702 x) (OpenAI CLIP model.py `QuickGELU`)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "gelu_tanh_truncated": gelu_tanh_truncated, "silu": silu,
               "relu": relu, "quick_gelu": quick_gelu}


def _linear(params: dict, x: jax.Array, weight: str, bias: str, has_bias: bool) -> jax.Array:
    y = x @ params[weight]  # [B, S, d_in] @ [d_in, d_out] -> [B, S, d_out]
    return y + params[bias] if has_bias else y


def mlp(config: ModelConfig, params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """The feed-forward block of one layer: [B, S, d_model] -> [B, S, d_model]."""
    act = ACTIVATIONS[config.activation]
    p, b = prefix, config.mlp_bias
    up = _linear(params, x, f"{p}.w_up", f"{p}.b_up", b)  # [B, S, d_ff]
    if config.mlp == "gated":
        hidden = act(_linear(params, x, f"{p}.w_gate", f"{p}.b_gate", b)) * up
    else:
        hidden = act(up)
    return _linear(params, hidden, f"{p}.w_down", f"{p}.b_down", b)
