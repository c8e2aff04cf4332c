"""Causal self-attention (Vaswani et al. 2017) with MHA / GQA / MQA, RoPE or ALiBi (JAX twin).

GQA (Ainslie et al. 2023): n_heads query heads share n_kv_heads key/value heads in
contiguous groups, query head h reads KV head h // (n_heads / n_kv_heads) (HF `repeat_kv`).

          q heads:  0 1 2 3 | 4 5 6 7
          kv heads:    0    |    1        (n_heads 8, n_kv_heads 2)

Unlike the golden, the KV heads are not repeated: the query heads are viewed as
[n_kv_heads, group] (C order, so h = j * group + g reads KV head j) and contracted with the
KV heads directly.

q, k, v are the projections (+ bias), clipped (OLMo `clip_qkv`), then q and k normalised
(the plan's `qk_norm`, spec/MATH.md "QK norm": `per_projection` over the whole [H*hd] / [K*hd]
projection before the split into heads, transformers `Olmo2Attention`; `per_head` over each
head's hd, transformers `Qwen3Attention` / `Gemma3Attention`), then rotated (RoPE).  Llama 4
normalises q and k after the RoPE instead, on its RoPE layers only, with a weightless RMSNorm
per head (`qk_norm` "l2", transformers `Llama4TextL2Norm`), and scales the queries of its NoPE
layers by a temperature log1p(floor((p + 1) / floor)) * scale + 1 at absolute position p
(`query_temperature`; transformers `Llama4TextAttention`, Meta's llama-models
models/llama4/model.py `attn_temperature_tuning`), before the scores.

scores = (q k^T) * s, s = config.attn_scale (head_dim^-0.5, or query_scale_dim^-0.5: Gemma 2's
`query_pre_attn_scalar`), softcapped to c tanh(scores / c) when `attn_softcap` is set
(transformers gemma2 `eager_attention_forward`: after the scale, before the mask), (+ ALiBi
bias); keys the layer's mask hides (impl_jax/masks.py: causal, sliding, chunked, empty cache
slots) get the dtype's lowest finite value (spec/MATH.md, "Masks": a row with no visible key
stays finite).  What each layer does (its mask, its RoPE, ALiBi, its QK norm) comes from its
plan (spec/plan.py).

Scores, bias and softmax are in at least float32, as fused attention kernels keep them (HF
`eager_attention_forward` upcasts the softmax; a bfloat16 ALiBi bias of -500 would be off by
up to 1); the probabilities are cast to the value dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lmref.impl_jax.alibi import alibi_bias, alibi_slopes
from lmref.impl_jax.cache import KVCache
from lmref.impl_jax.masks import visible
from lmref.impl_jax.norms import l2_norm, qk_norm, upcast
from lmref.impl_jax.rope import apply_rope
from lmref.spec.config import ModelConfig
from lmref.spec.plan import LayerPlan


def _project(config: ModelConfig, params: dict, p: str, x: jax.Array, name: str) -> jax.Array:
    """x [B, S, d_model] -> [B, S, heads * head_dim] through w{name} (+ b{name}), clipped."""
    y = x @ params[f"{p}.w{name}"]  # [B, S, d_model] @ [d_model, heads * hd]
    if config.qkv_bias:
        y = y + params[f"{p}.b{name}"]
    if config.qkv_clip is not None:
        y = jnp.clip(y, -config.qkv_clip, config.qkv_clip)  # OLMo clip_qkv, after the bias
    return y


def _split_heads(config: ModelConfig, y: jax.Array) -> jax.Array:
    return y.reshape(*y.shape[:2], -1, config.head_dim)  # [B, S, heads * hd] -> [B, S, heads, hd]


def queries_keys_values(config: ModelConfig, plan: LayerPlan, params: dict, p: str,
                        x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [B, S, d_model] -> q [B, S, H, hd], k and v [B, S, KV, hd], q and k normalised as the
    plan says (not yet rotated)."""
    q, k, v = (_project(config, params, p, x, name) for name in "qkv")  # [B, S, H*hd], [B, S, KV*hd] x 2
    if plan.qk_norm == "per_projection":
        q, k = qk_norm(config, params, f"{p}.q_norm", q), qk_norm(config, params, f"{p}.k_norm", k)
    q, k, v = (_split_heads(config, t) for t in (q, k, v))
    if plan.qk_norm == "per_head":
        q, k = qk_norm(config, params, f"{p}.q_norm", q), qk_norm(config, params, f"{p}.k_norm", k)
    return q, k, v


def query_temperature(temperature: tuple[int, float], positions: jax.Array, dtype) -> jax.Array:
    """Llama 4's query temperature [S] in `dtype` at the absolute positions [S] (traced under
    jit: no branch on their values): log1p(floor((p + 1) / floor)) * scale + 1, 1 while
    p + 1 < floor.  The floor is an integer division, exact at any context length."""
    floor, scale = temperature
    return jnp.log1p(((positions + 1) // floor).astype(dtype)) * scale + 1


def attention_scores(config: ModelConfig, plan: LayerPlan, q: jax.Array, k: jax.Array, q_pos: jax.Array,
                     k_pos: jax.Array) -> jax.Array:
    """Masked, biased scores [B, KV, G, Sq, Sk] from q [B, Sq, KV, G, hd], k [B, Sk, KV, hd],
    in at least float32."""
    wide = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("bqjgd,bkjd->bjgqk", q, k, preferred_element_type=wide) * config.attn_scale
    if config.attn_softcap is not None:
        scores = config.attn_softcap * jnp.tanh(scores / config.attn_softcap)
    if plan.alibi:
        bias = alibi_bias(alibi_slopes(config.n_heads, config.alibi_max_bias, config.alibi_slopes), q_pos, k_pos, scores.dtype)
        scores = scores + bias.reshape(q.shape[2], q.shape[3], *bias.shape[1:])  # [H, ..] -> [KV, G, Sq, Sk]
    return jnp.where(visible(plan.mask, q_pos, k_pos), scores, jnp.finfo(scores.dtype).min)


def attention(config: ModelConfig, plan: LayerPlan, params: dict, prefix: str, x: jax.Array,
              positions: jax.Array, cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """One attention block: x [B, S, d_model] at `positions` [S] -> ([B, S, d_model], cache).

    With a cache, this step's keys, values and positions are written to it and the queries
    read every slot of the buffer at the positions it records (empty slots are never visible)."""
    batch, seq = x.shape[:2]
    q, k, v = queries_keys_values(config, plan, params, prefix, x)  # [B, S, H, hd], [B, S, KV, hd] x 2
    if plan.rope is not None:
        q, k = (apply_rope(plan.rope, t, positions, config.max_seq_len) for t in (q, k))
    if plan.qk_norm == "l2":  # Llama 4: weightless, per head, after the RoPE (RoPE layers only)
        q, k = l2_norm(q, config.norm_eps), l2_norm(k, config.norm_eps)  # [B, S, H, hd], [B, S, KV, hd]
    if plan.temperature is not None:  # Llama 4's NoPE layers, at the queries' absolute positions
        wide = upcast(q)
        q = (wide * query_temperature(plan.temperature, positions, wide.dtype)[None, :, None, None]).astype(q.dtype)
    k_positions = positions
    if cache is not None:
        cache = cache.update(plan.index, k, v, positions)
        i = plan.index
        k, v, k_positions = cache.keys[i], cache.values[i], cache.positions[i]  # [B, T, KV, hd] x 2, [T]
    q = q.reshape(batch, seq, config.n_kv_heads, config.kv_group_size, config.head_dim)  # [B, S, KV, G, hd]
    probs = jax.nn.softmax(attention_scores(config, plan, q, k, positions, k_positions))  # [B, KV, G, S, T]
    out = jnp.einsum("bjgqk,bkjd->bqjgd", probs.astype(v.dtype), v)  # [B, S, KV, G, hd]
    out = out.reshape(batch, seq, config.q_dim) @ params[f"{prefix}.wo"]  # [B, S, H*hd] -> [B, S, d_model]
    if config.attn_out_bias:
        out = out + params[f"{prefix}.bo"]
    return out, cache
