"""Activations and the feed-forward block (float64 golden).

plain: down(act(x @ w_up + b_up)) (GPT-2's c_fc / c_proj).
gated: down(act(x @ w_gate) * (x @ w_up)) (Shazeer 2020, "GLU Variants": SwiGLU with silu,
GeGLU with gelu; HF `LlamaMLP`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from lmref.spec.config import ModelConfig


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016; torch `gelu`)."""
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (HF `gelu_new`)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


# sqrt(2 / pi) = 0.7978845608028654..., as BLOOM's authors wrote it: Megatron-DeepSpeed
# megatron/model/fused_bias_gelu.py `bias_gelu` (ParallelMLP's path unless --no-bias-gelu-fusion)
# and transformers models/bloom/modeling_bloom.py `bloom_gelu_forward` both use 0.79788456.
TRUNCATED_SQRT_2_OVER_PI = 0.79788456


def gelu_tanh_truncated(x: np.ndarray) -> np.ndarray:
    """BLOOM's tanh GELU, 0.5 x (1 + tanh(0.79788456 (x + 0.044715 x^3))): `gelu_tanh` with
    sqrt(2/pi) truncated to 8 decimals (a relative change of 1e-10 inside the tanh)."""
    return 0.5 * x * (1.0 + np.tanh(TRUNCATED_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), written to stay finite for large |x|."""
    return x * 0.5 * (1.0 + np.tanh(0.5 * x))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def quick_gelu(x: np.ndarray) -> np.ndarray:
    """CLIP's x * sigmoid(1.702 x) (OpenAI CLIP model.py `QuickGELU`; transformers
    `QuickGELUActivation`), sigmoid written with tanh to stay finite for large |x|."""
    return x * 0.5 * (1.0 + np.tanh(0.5 * 1.702 * x))


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "gelu_tanh_truncated": gelu_tanh_truncated, "silu": silu,
               "relu": relu, "quick_gelu": quick_gelu}


def _linear(params: dict, x: np.ndarray, weight: str, bias: str, has_bias: bool) -> np.ndarray:
    y = x @ params[weight]  # [B, S, d_in] @ [d_in, d_out] -> [B, S, d_out]
    return y + params[bias] if has_bias else y


def mlp(config: ModelConfig, params: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    """The feed-forward block of one layer: [B, S, d_model] -> [B, S, d_model]."""
    act = ACTIVATIONS[config.activation]
    p, b = prefix, config.mlp_bias
    up = _linear(params, x, f"{p}.w_up", f"{p}.b_up", b)  # [B, S, d_ff]
    if config.mlp == "gated":
        hidden = act(_linear(params, x, f"{p}.w_gate", f"{p}.b_gate", b)) * up
    else:
        hidden = act(up)
    return _linear(params, hidden, f"{p}.w_down", f"{p}.b_down", b)
