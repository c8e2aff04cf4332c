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


def _project(params: dict, prefix: str, name: str, x: jax.Array, with_bias: bool) -> jax.Array:
    """x [B, S, d_in] through `{prefix}.w_{name}` [d_in, d_out], plus `{prefix}.b_{name}` [d_out]
    when the config has biases: [B, S, d_out]."""
    y = jnp.einsum("bsi,io->bso", x, params[f"{prefix}.w_{name}"])  # [B, S, d_in] x [d_in, d_out]
    return y + params[f"{prefix}.b_{name}"] if with_bias else y


def mlp(config: ModelConfig, params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """The feed-forward block of one layer: [B, S, d_model] -> [B, S, d_model].  The activation
    goes on the gate, never on the up projection (HF `LlamaMLP`:
    `down_proj(act_fn(gate_proj(x)) * up_proj(x))`)."""
    act, biased = ACTIVATIONS[config.activation], config.mlp_bias
    if config.mlp == "gated":
        hidden = act(_project(params, prefix, "gate", x, biased)) * _project(params, prefix, "up", x, biased)
    else:
        hidden = act(_project(params, prefix, "up", x, biased))  # [B, S, d_ff]
    return _project(params, prefix, "down", hidden, biased)
