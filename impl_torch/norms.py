"""Normalisation layers, torch twin of impl_numpy/norms.py.

LayerNorm: (x - mean) / sqrt(var + eps) * w + b with the biased variance (torch.nn.LayerNorm).
OLMo-1 uses it with neither w nor b (`OlmoLayerNorm`).
RMSNorm: x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019; HF `LlamaRMSNorm`).

bf16 / fp16 inputs are normalised in float32 and cast back, as HF `LlamaRMSNorm` does
(`hidden_states.to(torch.float32)`): a mean of squares accumulated in half precision loses
digits, and fp16 squares overflow above |x| = 256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmref.spec.config import ModelConfig


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where precision matters (norms, softmax, RoPE angles, ALiBi distances) bf16 and fp16
    models compute in float32; float32 and float64 models in their own dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(compute_dtype(x.dtype))


def layer_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """Normalise the last axis to zero mean and unit (biased) variance, then w, b."""
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rms_norm(x: torch.Tensor, eps: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Divide the last axis by its root mean square, then w."""
    return F.rms_norm(x, x.shape[-1:], weight, eps)


class Norm(nn.Module):
    """The config's norm with its optional affine parameters `weight`, `bias` [d_model]
    (the module twin of impl_numpy.norms.apply_norm)."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        self.kind, self.eps = config.norm, config.norm_eps
        d = config.d_model
        self.weight = nn.Parameter(torch.ones(d, dtype=dtype, device=device)) if config.norm_weight else None
        self.bias = nn.Parameter(torch.zeros(d, dtype=dtype, device=device)) if config.norm_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else upcast(self.weight)
        if self.kind == "layernorm":
            b = None if self.bias is None else upcast(self.bias)
            return layer_norm(upcast(x), self.eps, w, b).to(x.dtype)
        return rms_norm(upcast(x), self.eps, w).to(x.dtype)
