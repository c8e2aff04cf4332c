"""Activations and the feed-forward block, torch twin of impl_numpy/mlp.py.

plain: down(act(x @ w_up + b_up)) (GPT-2's c_fc / c_proj).
gated: down(act(x @ w_gate) * (x @ w_up)) (Shazeer 2020, "GLU Variants": SwiGLU with silu,
GeGLU with gelu; HF `LlamaMLP`).

Projections are `nn.Linear`, whose weight is [d_out, d_in]: the transpose of the canonical
[d_in, d_out] (spec/params.py); model.py transposes when loading and saving.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from lmref.spec.config import ModelConfig

gelu = F.gelu  # exact: 0.5 x (1 + erf(x / sqrt 2)) (Hendrycks & Gimpel 2016)
gelu_tanh = functools.partial(F.gelu, approximate="tanh")  # GPT-2's `gelu_new`
silu = F.silu  # x * sigmoid(x)
relu = F.relu


def gelu_tanh_truncated(x: torch.Tensor) -> torch.Tensor:
    """BLOOM's tanh GELU with sqrt(2/pi) written 0.79788456: transformers `bloom_gelu_forward`,
    `x * 0.5 * (1.0 + tanh(0.79788456 * x * (1 + 0.044715 * x * x)))`, as Megatron-DeepSpeed's
    fused `bias_gelu` (megatron/model/fused_bias_gelu.py) writes it."""
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1.0 + 0.044715 * x * x)))


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """CLIP's x * sigmoid(1.702 x) (OpenAI CLIP model.py `QuickGELU`)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "gelu_tanh_truncated": gelu_tanh_truncated, "silu": silu,
               "relu": relu, "quick_gelu": quick_gelu}


class MLP(nn.Module):
    """The feed-forward block of one layer: [B, S, d_model] -> [B, S, d_model], of width `d_ff`
    (the config's by default; a MoE layer's shared expert has its own, impl_torch/moe.py)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None, d_ff: int | None = None):
        super().__init__()
        d, f, b = config.d_model, d_ff or config.d_ff, config.mlp_bias
        kw = dict(bias=b, dtype=dtype, device=device)
        self.act = ACTIVATIONS[config.activation]
        self.w_gate = nn.Linear(d, f, **kw) if config.mlp == "gated" else None
        self.w_up = nn.Linear(d, f, **kw)
        self.w_down = nn.Linear(f, d, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.w_up(x)  # [B, S, d_ff]
        hidden = self.act(up) if self.w_gate is None else self.act(self.w_gate(x)) * up
        return self.w_down(hidden)  # [B, S, d_model]
