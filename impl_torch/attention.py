"""Causal self-attention with MHA / GQA / MQA, RoPE or ALiBi: torch twin of
impl_numpy/attention.py, with two interchangeable kernels (`attn_impl`):

  "eager"  q k^T, softcap, additive bias, softmax (all in float32 at least), @ v: the plain path
  "sdpa"   torch.nn.functional.scaled_dot_product_attention (fused kernels where torch has
           them); a plain causal layer without cache and without ALiBi is `is_causal=True`
           (exact there: the keys are the queries, in order), every other case passes the
           same additive bias as the eager path, rounded to q's dtype (spec/MATH.md,
           "Precision policy": SDPA's documented mask dtype).  SDPA has no hook between the scores
           and the mask, so a config with a score softcap runs eager (`kernel_of`); so
           does transformers' Gemma 2 (its sdpa path refuses a softcap, hf_measured.md;
           `eager_attention_forward` of gemma2 applies it)

Per layer (spec/MATH.md, "Attention" and "QK norm"):

    q, k, v = x Wq (+ bq), x Wk (+ bk), x Wv (+ bv)     clipped to [-c, c] (OLMo clip_qkv)
    q, k = q_norm(q), k_norm(k)      RMSNorm per head (Qwen 3, Gemma 3) or of the whole
                                     projection (OLMo 2), before the RoPE
    q, k = rope(q), rope(k)
    q, k = l2_norm(q), l2_norm(k)    Llama 4's "l2": weightless RMSNorm per head, after the
                                     RoPE, on the RoPE layers only (transformers
                                     `Llama4TextL2Norm`)
    q = q * temperature(p)           Llama 4's NoPE layers: log1p(floor((p + 1) / floor)) *
                                     scale + 1 at the absolute position p of each query
                                     (transformers `Llama4TextAttention`, Meta's llama-models
                                     models/llama4/model.py `attn_temperature_tuning`)
    scores = q k^T * scale           scale = (query_scale_dim or head_dim)^-0.5 (Gemma 2)
    scores = c tanh(scores / c)      attn_softcap c (Gemma 2), before ALiBi and the mask

GQA (Ainslie et al. 2023): query head h reads KV head h // (n_heads / n_kv_heads), the
contiguous groups of HF `repeat_kv` (SDPA's `enable_gqa` repeats the same way).

          q heads:  0 1 2 3 | 4 5 6 7
          kv heads:    0    |    1        (n_heads 8, n_kv_heads 2)

What each layer does (its mask, its RoPE, ALiBi) comes from its plan (spec/plan.py).
Tensors are head-major inside attention: q [B, H, Sq, hd], k and v [B, KV, Sk, hd] (the
layout of SDPA and of the KV cache).  Which keys a query sees is impl_torch/masks.py's rule
over token positions; the additive bias puts the dtype's lowest finite value, not -inf,
on hidden keys (a -inf row turns into NaN in exported graphs, pytorch#159973,
microsoft/onnxscript#2992): a row with no visible key (a padding query) softmaxes to a
finite uniform row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmref.impl_torch import masks
from lmref.impl_torch.alibi import alibi_bias
from lmref.impl_torch.constants import ConfigTensors
from lmref.impl_torch.norms import Norm, compute_dtype, l2_norm, upcast
from lmref.impl_torch.rope import apply_rope
from lmref.spec.config import ModelConfig
from lmref.spec.plan import LayerPlan, Rope

ATTN_IMPLS = ("sdpa", "eager")


def group_queries(q: torch.Tensor, n_kv: int) -> torch.Tensor:
    """[B, H, Sq, D] -> [B, KV, H / KV, Sq, D] (queries, or the probabilities): query heads
    j * G .. (j + 1) * G - 1 share kv head j (HF `repeat_kv`'s grouping), so the products
    broadcast each kv head over its group instead of copying it H / KV times (the export then
    holds no Expand of the cache)."""
    b, h, sq, d = q.shape
    return q.reshape(b, n_kv, h // n_kv, sq, d)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(x / cap): x squashed into (-cap, cap) (Gemma 2's attention and final-logit
    softcaps, HF `Gemma2Attention` / `Gemma2ForCausalLM`)."""
    return cap * torch.tanh(x / cap)


def kernel_of(config: ModelConfig, attn_impl: str) -> str:
    """The kernel a config runs on: the requested one, but eager where the scores are
    softcapped (SDPA has no hook for it)."""
    return "eager" if config.attn_softcap is not None else attn_impl


def eager_attention(config: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    bias: torch.Tensor) -> torch.Tensor:
    """softmax(softcap(q k^T * scale) + bias) v: [B, H, Sq, hd]; the scores (the q.k products
    themselves: q and k are upcast before the product, so no score is ever rounded to a half
    dtype), the bias and the softmax in float32 at least; the probabilities are cast to v's
    dtype for the value product (spec/MATH.md, "Precision policy")."""
    b, h, sq, hd = q.shape
    n_kv = k.shape[1]
    keys = upcast(k)[:, :, None].transpose(-1, -2)  # [B, KV, 1, hd, Sk]
    # matmul, not einsum: the export's graph then holds MatMul, which onnxruntime runs 2 to 3.5
    # times faster than Einsum at decode shapes (issue 16's profile)
    scores = (group_queries(upcast(q), n_kv) @ keys).reshape(b, h, sq, -1)  # [B, KV, G, Sq, Sk] -> [B, H, Sq, Sk]
    scores = scores * config.attn_scale
    if config.attn_softcap is not None:
        scores = softcap(scores, config.attn_softcap)  # Gemma 2: on the scaled scores, before the bias
    probs = torch.softmax(scores + bias, dim=-1)
    out = group_queries(probs, n_kv).to(v.dtype) @ v[:, :, None]  # [B, KV, G, Sq, Sk] @ [B, KV, 1, Sk, hd]
    return out.reshape(b, h, sq, hd)


def sdpa_attention(config: ModelConfig, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """The same attention through SDPA; `bias` None means plain causal (no cache, no ALiBi:
    ScoreBiases.plain_causal)."""
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, is_causal=bias is None, scale=config.attn_scale,
        enable_gqa=config.n_kv_heads != config.n_heads,
    )  # [B, H, Sq, hd]


def bias_dtype(attn_impl: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel receives the bias in: the eager path adds it to float32 (or
    float64) scores; SDPA takes "a float mask of the same type as query, key, value"
    (torch.nn.functional.scaled_dot_product_attention's documentation), which its kernels add
    to their own float32 scores."""
    return compute_dtype(dtype) if attn_impl == "eager" else dtype


def query_temperature(temperature: tuple[int, float], positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Llama 4's query temperature [P, 1, S, 1] in `dtype` at the absolute positions [P, S]:
    log1p(floor((p + 1) / floor)) * scale + 1 (transformers `Llama4TextAttention`:
    `torch.log1p(torch.floor((cache_position.float() + 1.0) / self.floor_scale)) * self.attn_scale
    + 1.0`; Meta's llama-models models/llama4/model.py), 1 while p + 1 < floor.  The floor is an
    integer division of the int64 positions (exact at any context length; no branch on the
    values, so torch.export traces it)."""
    floor, scale = temperature
    steps = torch.div(positions + 1, floor, rounding_mode="floor").to(dtype)  # [P, S]
    return (torch.log1p(steps) * scale + 1.0)[:, None, :, None]  # [P, 1, S, 1]


def attention_bias(plan: LayerPlan, q_positions: torch.Tensor, k_positions: torch.Tensor, dtype: torch.dtype,
                   constants: ConfigTensors) -> torch.Tensor:
    """Additive score bias [P, H or 1, Sq, Sk] in `dtype` for a layer of plan `plan`: the ALiBi
    bias (or 0) where its mask shows the key, the lowest finite value of `dtype` where not.

    Built in float32 at least whatever `dtype` (the ALiBi distances, slopes and the masked
    fill), then rounded once to `dtype` (a no-op for the eager kernel's float32; SDPA's half
    dtype): the lowest finite value of `dtype` is exact in float32, where float32's own lowest
    value would round to -inf in bfloat16."""
    wide = compute_dtype(dtype)
    shown = masks.visible(plan.mask, q_positions, k_positions)  # [P, 1, Sq, Sk]
    if plan.alibi:
        allowed = alibi_bias(constants.alibi_slopes, q_positions, k_positions, wide)  # [P, H, Sq, Sk]
    else:
        allowed = torch.zeros((), dtype=wide, device=q_positions.device)
    return torch.where(shown, allowed, torch.finfo(dtype).min).to(dtype)


class ScoreBiases:
    """The score biases of one forward pass at query positions [P, S]: each built once per
    distinct (mask, ALiBi) of the plan and key-position tensor, and reused by every layer
    that shares them.  None where SDPA's own causal mask is exact (`plain_causal`)."""

    def __init__(self, constants: ConfigTensors, q_positions: torch.Tensor, dtype: torch.dtype, attn_impl: str,
                 cached: bool):
        self.constants, self.q_positions = constants, q_positions
        self.dtype = bias_dtype(attn_impl, dtype)
        self.sdpa_without_cache = attn_impl == "sdpa" and not cached
        self._built: dict = {}

    def plain_causal(self, plan: LayerPlan) -> bool:
        """SDPA's `is_causal=True` equals the causal rule only without a cache (keys = the
        queries, in position order) and without ALiBi."""
        return self.sdpa_without_cache and plan.mask.kind == "causal" and not plan.alibi

    def __call__(self, plan: LayerPlan, k_positions: torch.Tensor) -> torch.Tensor | None:
        if self.plain_causal(plan):
            return None
        key = (plan.mask, plan.alibi)
        built = self._built.get(key)
        if built is not None and built[0] is k_positions:
            return built[1]
        bias = attention_bias(plan, self.q_positions, k_positions, self.dtype, self.constants)
        self._built[key] = (k_positions, bias)
        return bias


@dataclass
class Step:
    """What the layers of one forward pass share."""

    positions: torch.Tensor  # [P, S] positions of the queries (P: 1 or the batch)
    ropes: dict[Rope, tuple[torch.Tensor, torch.Tensor]]  # cos, sin [P, 1, S, r/2] per distinct Rope
    biases: ScoreBiases
    cache: object | None  # anything with KVCache's `append`; None: the keys are the queries' own
    attn_impl: str  # the kernel (kernel_of: eager when the scores are softcapped)


def qk_norm(config: ModelConfig, plan: LayerPlan, heads: int, dtype: torch.dtype, device) -> Norm | None:
    """The RMSNorm of q (heads = n_heads) or k (heads = n_kv_heads) the plan asks for: over
    head_dim, one weight shared by the heads ("per_head"), or over the whole projection
    ("per_projection"); (1 + w) with norm_unit_offset, no weight without norm_weight."""
    if plan.qk_norm not in ("per_head", "per_projection"):
        return None  # "none"; "l2" has no weight: Attention.forward applies l2_norm after the RoPE
    size = config.head_dim if plan.qk_norm == "per_head" else heads * config.head_dim
    return Norm("rmsnorm", size, config.norm_eps, weight=config.norm_weight, bias=False,
                unit_offset=config.norm_unit_offset, dtype=dtype, device=device)


class Attention(nn.Module):
    """One attention block of the layer planned by `plan`: x [B, S, d_model] -> [B, S, d_model]."""

    def __init__(self, config: ModelConfig, plan: LayerPlan, dtype: torch.dtype, device=None):
        super().__init__()
        self.config, self.plan = config, plan
        d, q, kv = config.d_model, config.q_dim, config.kv_dim
        kw = dict(dtype=dtype, device=device)
        self.wq = nn.Linear(d, q, bias=config.qkv_bias, **kw)
        self.wk = nn.Linear(d, kv, bias=config.qkv_bias, **kw)
        self.wv = nn.Linear(d, kv, bias=config.qkv_bias, **kw)
        self.wo = nn.Linear(q, d, bias=config.attn_out_bias, **kw)
        self.q_norm = qk_norm(config, plan, config.n_heads, dtype, device)
        self.k_norm = qk_norm(config, plan, config.n_kv_heads, dtype, device)

    def _project(self, linear: nn.Linear, x: torch.Tensor, heads: int, norm: Norm | None = None) -> torch.Tensor:
        """x [B, S, d_model] -> [B, heads, S, head_dim], through `norm` (the q/k norm) if given."""
        y = linear(x)  # [B, S, heads * hd]
        if self.config.qkv_clip is not None:
            c = self.config.qkv_clip
            y = y.clamp(-c, c)  # OLMo clip_qkv, after the bias, before the norm (OLMo-core's order)
        if norm is not None and self.plan.qk_norm == "per_projection":
            y = norm(y)  # OLMo 2 (HF `Olmo2Attention`): over all heads * hd, before the split
        y = y.view(*x.shape[:2], heads, self.config.head_dim)  # [B, S, heads, hd]
        if norm is not None and self.plan.qk_norm == "per_head":
            y = norm(y)  # Qwen 3, Gemma 3 (HF `Qwen3Attention`): over each head's hd
        return y.transpose(1, 2)  # [B, heads, S, hd]

    def forward(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        """x at the step's query positions; this layer's keys go to the step's cache, if any."""
        c, plan = self.config, self.plan
        q = self._project(self.wq, x, c.n_heads, self.q_norm)  # [B, H, S, hd]
        k = self._project(self.wk, x, c.n_kv_heads, self.k_norm)  # [B, KV, S, hd]
        v = self._project(self.wv, x, c.n_kv_heads)
        if plan.rope is not None:
            cos, sin = step.ropes[plan.rope]
            q, k = apply_rope(plan.rope, q, cos, sin), apply_rope(plan.rope, k, cos, sin)
        if plan.qk_norm == "l2":  # Llama 4: weightless, per head, after the RoPE (RoPE layers only)
            q, k = l2_norm(q, c.norm_eps), l2_norm(k, c.norm_eps)  # [B, H, S, hd], [B, KV, S, hd]
        if plan.temperature is not None:  # Llama 4's NoPE layers, at the queries' absolute positions
            wide = upcast(q)
            q = (wide * query_temperature(plan.temperature, step.positions, wide.dtype)).to(q.dtype)
        k_positions = step.positions
        if step.cache is not None:
            k, v, k_positions = step.cache.append(plan.index, k, v, step.positions)  # [B, KV, T, hd] x 2, [P, T]
        kernel = sdpa_attention if step.attn_impl == "sdpa" else eager_attention
        out = kernel(c, q, k, v, step.biases(plan, k_positions))  # [B, H, S, hd]
        out = out.transpose(1, 2).reshape(*x.shape[:2], c.q_dim)  # [B, S, H * hd]
        return self.wo(out)  # [B, S, d_model]
