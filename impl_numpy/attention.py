"""Causal self-attention (Vaswani et al. 2017) with MHA / GQA / MQA, RoPE or ALiBi.

GQA (Ainslie et al. 2023): n_heads query heads share n_kv_heads key/value heads in
contiguous groups, query head h reads KV head h // (n_heads / n_kv_heads) (HF `repeat_kv`).

          q heads:  0 1 2 3 | 4 5 6 7
          kv heads:    0    |    1        (n_heads 8, n_kv_heads 2)

q, k are normalised (the plan's QK norm, spec/MATH.md "QK norm") after the projection and
the clip, before the RoPE; Llama 4's weightless "l2" norm comes after the RoPE, and its NoPE
layers scale q by a temperature that grows with the position.  scores = (q k^T) * attn_scale (head_dim^-0.5, or
query_scale_dim^-0.5), softcapped (Gemma 2: c tanh(scores / c)), plus the ALiBi bias; keys
the layer's mask hides (impl_numpy/masks.py: causal, sliding, chunked, empty cache slots) get
-inf.  What each layer does (its mask, its RoPE, its QK norm) comes from its plan
(spec/plan.py).
"""

from __future__ import annotations

import numpy as np

from lmref.impl_numpy.alibi import alibi_bias, alibi_slopes
from lmref.impl_numpy.cache import KVCache
from lmref.impl_numpy.masks import visible
from lmref.impl_numpy.norms import qk_norm, rms_norm
from lmref.impl_numpy.rope import apply_rope
from lmref.spec.config import ModelConfig
from lmref.spec.plan import LayerPlan


def expand_kv_heads(kv: np.ndarray, group_size: int) -> np.ndarray:
    """[B, T, n_kv, hd] -> [B, T, n_kv * group_size, hd]: kv head j serves query heads
    j * group_size .. (j + 1) * group_size - 1."""
    return np.repeat(kv, group_size, axis=2)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _project(config: ModelConfig, plan: LayerPlan, params: dict, p: str, x: np.ndarray, name: str,
             heads: int) -> np.ndarray:
    """x [B, S, d_model] -> [B, S, heads, head_dim] through w{name} (+ b{name}), clipped, and
    for q and k normalised as the plan says."""
    y = x @ params[f"{p}.w{name}"]  # [B, S, heads * hd]
    if config.qkv_bias:
        y = y + params[f"{p}.b{name}"]
    if config.qkv_clip is not None:
        y = np.clip(y, -config.qkv_clip, config.qkv_clip)  # OLMo clip_qkv, after the bias
    normed = name in ("q", "k")
    if normed and plan.qk_norm == "per_projection":  # OLMo 2: the whole projection
        y = qk_norm(config, params, f"{p}.{name}_norm", y)
    y = y.reshape(*x.shape[:2], heads, config.head_dim)  # [B, S, heads, hd]
    if normed and plan.qk_norm == "per_head":  # Qwen 3, Gemma 3: each head's hd dims
        y = qk_norm(config, params, f"{p}.{name}_norm", y)
    return y


def query_temperature(temperature: tuple[int, float], positions: np.ndarray) -> np.ndarray:
    """Llama 4's attention temperature tuning [S]: log(floor((p + 1) / floor) + 1) * scale + 1 at
    absolute position p (transformers `Llama4TextAttention`, Meta's llama-models; 1 for
    p + 1 < floor, so the tiny configs shrink the floor)."""
    floor, temperature_scale = temperature
    return np.log1p(np.floor((positions + 1) / floor)) * temperature_scale + 1.0


def attention_scores(config: ModelConfig, plan: LayerPlan, q: np.ndarray, k: np.ndarray, q_pos: np.ndarray,
                     k_pos: np.ndarray) -> np.ndarray:
    """Masked, biased scores [B, heads, Sq, Sk] from q [B, Sq, H, hd], k [B, Sk, H, hd]."""
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * config.attn_scale
    if config.attn_softcap is not None:  # Gemma 2: before the mask
        scores = config.attn_softcap * np.tanh(scores / config.attn_softcap)
    if plan.alibi:
        bias = alibi_bias(alibi_slopes(config.n_heads, config.alibi_max_bias, config.alibi_slopes), q_pos, k_pos)
        scores = scores + bias.astype(scores.dtype)
    return np.where(visible(plan.mask, q_pos, k_pos), scores, -np.inf)


def attention(config: ModelConfig, plan: LayerPlan, params: dict, prefix: str, x: np.ndarray,
              positions: np.ndarray, cache: KVCache | None = None) -> np.ndarray:
    """One attention block: x [B, S, d_model] at `positions` [S] -> [B, S, d_model]."""
    q = _project(config, plan, params, prefix, x, "q", config.n_heads)  # [B, S, H, hd]
    k = _project(config, plan, params, prefix, x, "k", config.n_kv_heads)  # [B, S, KV, hd]
    v = _project(config, plan, params, prefix, x, "v", config.n_kv_heads)
    if plan.rope is not None:
        q, k = apply_rope(plan.rope, q, positions), apply_rope(plan.rope, k, positions)
    if plan.qk_norm == "l2":  # Llama 4: weightless, per head, after the RoPE, on RoPE layers only
        q, k = rms_norm(q, config.norm_eps), rms_norm(k, config.norm_eps)
    if plan.temperature is not None:  # Llama 4's NoPE layers
        q = q * query_temperature(plan.temperature, positions).astype(q.dtype)[None, :, None, None]  # float32 stays
    k_positions = positions
    if cache is not None:
        k, v, k_positions = cache.append(plan.index, k, v, positions)  # [B, T, KV, hd] x 2, [T]
    k = expand_kv_heads(k, config.kv_group_size)  # [B, T, H, hd]
    v = expand_kv_heads(v, config.kv_group_size)
    probs = softmax(attention_scores(config, plan, q, k, positions, k_positions))  # [B, H, S, T]
    out = np.einsum("bhqk,bkhd->bqhd", probs, v)  # [B, S, H, hd]
    out = out.reshape(*x.shape[:2], config.q_dim) @ params[f"{prefix}.wo"]  # [B, S, d_model]
    if config.attn_out_bias:
        out = out + params[f"{prefix}.bo"]
    return out
