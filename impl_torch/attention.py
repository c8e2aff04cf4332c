"""Causal self-attention with MHA / GQA / MQA, RoPE or ALiBi: torch twin of
impl_numpy/attention.py, with two interchangeable kernels (`attn_impl`):

  "eager"  q k^T, additive bias, softmax (in float32 at least), @ v: the plain path
  "sdpa"   torch.nn.functional.scaled_dot_product_attention (fused kernels where torch has
           them); causal without cache and without ALiBi is `is_causal=True`, every other
           case passes the same additive float bias as the eager path

GQA (Ainslie et al. 2023): query head h reads KV head h // (n_heads / n_kv_heads), the
contiguous groups of HF `repeat_kv` (SDPA's `enable_gqa` repeats the same way).

          q heads:  0 1 2 3 | 4 5 6 7
          kv heads:    0    |    1        (n_heads 8, n_kv_heads 2)

Tensors are head-major inside attention: q [B, H, Sq, hd], k and v [B, KV, Sk, hd] (the
layout of SDPA and of the KV cache).  The mask is additive and uses the dtype's lowest
finite value, not -inf (a -inf row turns into NaN in exported graphs,
pytorch#159973, microsoft/onnxscript#2992); every query sees at least itself, so no row is
fully masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from impl_torch.alibi import alibi_bias, alibi_slopes
from impl_torch.cache import KVCache
from impl_torch.norms import compute_dtype, upcast
from impl_torch.rope import apply_rope
from spec.config import ModelConfig

ATTN_IMPLS = ("sdpa", "eager")


def causal_mask(q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """[P, 1, Sq, Sk] True where query q may attend to key k, i.e. k <= q; positions [P, S]."""
    return (k_positions[:, None, :] <= q_positions[:, :, None])[:, None]  # [P, 1, Sq, Sk]


def attention_bias(config: ModelConfig, q_positions: torch.Tensor, k_positions: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """Additive score bias [P, H or 1, Sq, Sk] in `dtype`: the ALiBi bias (or 0) where the key
    is visible, the lowest finite value of `dtype` where it is masked."""
    visible = causal_mask(q_positions, k_positions)
    if config.position == "alibi":
        slopes = alibi_slopes(config.n_heads, config.alibi_max_bias)
        allowed = alibi_bias(slopes, q_positions, k_positions, compute_dtype(dtype)).to(dtype)
    else:
        allowed = torch.zeros((), dtype=dtype, device=q_positions.device)
    return torch.where(visible, allowed, torch.finfo(dtype).min)


def expand_kv_heads(kv: torch.Tensor, group_size: int) -> torch.Tensor:
    """[B, KV, T, hd] -> [B, KV * group_size, T, hd]: kv head j serves query heads
    j * group_size .. (j + 1) * group_size - 1 (HF `repeat_kv`)."""
    b, n_kv, t, hd = kv.shape
    return kv[:, :, None].expand(b, n_kv, group_size, t, hd).reshape(b, n_kv * group_size, t, hd)


def eager_attention(config: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v: [B, H, Sq, hd]; scores and softmax in float32 at least."""
    k = expand_kv_heads(k, config.kv_group_size)  # [B, H, Sk, hd]
    v = expand_kv_heads(v, config.kv_group_size)
    scores = upcast(torch.einsum("bhqd,bhkd->bhqk", q, k)) * config.attn_scale  # [B, H, Sq, Sk]
    probs = torch.softmax(scores + bias, dim=-1).to(v.dtype)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v)  # [B, H, Sq, hd]


def sdpa_attention(config: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """The same attention through SDPA; `bias` None means plain causal (square, no cache)."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, is_causal=bias is None, scale=config.attn_scale,
        enable_gqa=config.n_kv_heads != config.n_heads,
    )  # [B, H, Sq, hd]


def bias_dtype(attn_impl: str, dtype: torch.dtype) -> torch.dtype:
    """The eager path adds the bias to float32 (or float64) scores; SDPA wants q's dtype."""
    return compute_dtype(dtype) if attn_impl == "eager" else dtype


class Attention(nn.Module):
    """One attention block: x [B, S, d_model] -> [B, S, d_model]."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        self.config = config
        d, q, kv = config.d_model, config.q_dim, config.kv_dim
        kw = dict(dtype=dtype, device=device)
        self.wq = nn.Linear(d, q, bias=config.qkv_bias, **kw)
        self.wk = nn.Linear(d, kv, bias=config.qkv_bias, **kw)
        self.wv = nn.Linear(d, kv, bias=config.qkv_bias, **kw)
        self.wo = nn.Linear(q, d, bias=config.attn_out_bias, **kw)

    def _project(self, linear: nn.Linear, x: torch.Tensor, heads: int) -> torch.Tensor:
        """x [B, S, d_model] -> [B, heads, S, head_dim]."""
        y = linear(x)  # [B, S, heads * hd]
        if self.config.qkv_clip is not None:
            c = self.config.qkv_clip
            y = y.clamp(-c, c)  # OLMo clip_qkv, after the bias
        return y.view(*x.shape[:2], heads, self.config.head_dim).transpose(1, 2)  # [B, heads, S, hd]

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                bias: torch.Tensor | None, cache: KVCache | None, layer: int, attn_impl: str) -> torch.Tensor:
        """`rope`: cos, sin of the query positions (RoPE models); `bias`: see attention_bias
        (None: SDPA's own causal mask); `cache`: this layer's keys go to cache slot `layer`."""
        c = self.config
        q = self._project(self.wq, x, c.n_heads)  # [B, H, S, hd]
        k = self._project(self.wk, x, c.n_kv_heads)  # [B, KV, S, hd]
        v = self._project(self.wv, x, c.n_kv_heads)
        if rope is not None:
            q, k = apply_rope(c, q, *rope), apply_rope(c, k, *rope)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # [B, KV, capacity, hd]
        kernel = sdpa_attention if attn_impl == "sdpa" else eager_attention
        out = kernel(c, q, k, v, bias)  # [B, H, S, hd]
        out = out.transpose(1, 2).reshape(*x.shape[:2], c.q_dim)  # [B, S, H * hd]
        return self.wo(out)  # [B, S, d_model]
