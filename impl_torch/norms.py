"""Normalisation layers, torch twin of impl_numpy/norms.py.

LayerNorm: (x - mean) / sqrt(var + eps) * w + b with the biased variance (torch.nn.LayerNorm).
OLMo-1 uses it with neither w nor b (`OlmoLayerNorm`).
RMSNorm: x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019; HF `LlamaRMSNorm`).
Unit offset (Gemma 1/2/3): the stored w scales as (1 + w) (HF `GemmaRMSNorm`: `output * (1.0 +
self.weight.float())`; Google's `gemma` `RMSNorm`: `normed * (1 + scale)`), so a freshly
built module holds w = 0.

bf16 / fp16 inputs are normalised in float32 and cast back, as HF `LlamaRMSNorm` does
(`hidden_states.to(torch.float32)`): a mean of squares accumulated in half precision loses
digits, and fp16 squares overflow above |x| = 256.

Llama 4's "l2" QK norm (`l2_norm`) is an RMSNorm without weight of each q / k head, after the
RoPE (transformers `Llama4TextL2Norm`: `self._norm(x.float()).type_as(x)`, `x *
torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)`; Meta's llama-models
models/llama4/model.py `rmsnorm(x, eps)`), likewise in float32 at least.
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


def l2_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., head_dim] / sqrt(mean(x^2) + eps) over the last axis, no weight (Llama 4's
    weightless QK norm), computed in float32 at least and cast back to x's dtype."""
    return rms_norm(upcast(x), eps).to(x.dtype)


class Norm(nn.Module):
    """A norm over the last axis, of `size` dims, with its optional affine parameters
    `weight`, `bias` [size] (the module twin of impl_numpy.norms.apply_norm; the q/k norms of
    impl_torch/attention.py are RMSNorms of this class over head_dim or a whole projection)."""

    def __init__(self, kind: str, size: int, eps: float, *, weight: bool, bias: bool, unit_offset: bool,
                 dtype: torch.dtype, device=None):
        super().__init__()
        self.kind, self.eps, self.unit_offset = kind, eps, unit_offset
        kw = dict(dtype=dtype, device=device)
        # the identity scale: w = 1, or w = 0 where the scale is (1 + w)
        w0 = torch.zeros(size, **kw) if unit_offset else torch.ones(size, **kw)
        self.weight = nn.Parameter(w0) if weight else None
        self.bias = nn.Parameter(torch.zeros(size, **kw)) if bias else None

    @classmethod
    def of(cls, config: ModelConfig, dtype: torch.dtype, device=None) -> Norm:
        """The config's norm over d_model (the block and final norms)."""
        return cls(config.norm, config.d_model, config.norm_eps, weight=config.norm_weight, bias=config.norm_bias,
                   unit_offset=config.norm_unit_offset, dtype=dtype, device=device)

    def _scale(self) -> torch.Tensor | None:
        """The multiplier of the normalised x, in float32 at least: w, (1 + w), or none."""
        if self.weight is None:
            return None
        w = upcast(self.weight)
        return 1.0 + w if self.unit_offset else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._scale()
        if self.kind == "layernorm":
            b = None if self.bias is None else upcast(self.bias)
            return layer_norm(upcast(x), self.eps, w, b).to(x.dtype)
        return rms_norm(upcast(x), self.eps, w).to(x.dtype)
