"""Rotary position embedding (Su et al. 2021, RoFormer) and its frequency scalings (JAX twin).

Each layer's RoPE comes from its plan (spec/plan.py, `Rope`: theta, scaling, rotated dims,
layout), so layers with their own base (Gemma 3's local layers) need no second code path.

inv_freq_i = theta^(-2i / r) for i < r/2, where r = rope.rotary_dim (the first r dims of a
head rotate, the rest pass through: GPT-NeoX / Phi partial rotary).  Position p rotates
pair i by the angle p * inv_freq_i.  Which dims form pair i is the layout:

  halves      (x_i, x_{i + r/2})   HF `rotate_half`, GPT-NeoX, HF LLaMA checkpoints
  interleaved (x_{2i}, x_{2i+1})   GPT-J `rotate_every_two`, Meta's original LLaMA code

Scalings (HF `modeling_rope_utils.py`): linear divides every frequency by `factor`;
llama3 (Llama 3.1) keeps the high frequencies, divides the low ones by `factor` and
interpolates between them (`_compute_llama3_parameters`).

The frequencies depend on the (static) plan only, so the cos / sin table of every position
in the context is computed once per (Rope, context length) on the host in float64 and
gathered at the (possibly traced) positions: an angle such as 1000 * inv_freq rounded in
float32 would be off by ~3e-5 (Meta's `precompute_freqs_cis` also tabulates the context).
Layers sharing a Rope share its table.  The table is read in float32 at least and the
rotation runs there, the result cast back to the activation dtype (spec/MATH.md, "Precision
policy"; as Meta's `apply_rotary_emb`, `xq.float()` then `.type_as(xq)`, and Google's
`gemma` `apply_rope`, `.astype(inputs.dtype)`; transformers instead casts cos and sin to the
activation dtype, `cos.to(x.dtype)`, and rotates there).

LongRoPE (spec/MATH.md, "LongRoPE") has two tables, the short factors' and the long ones', cos
and sin times the attention factor in both; a forward reads the long one for every position
when its sequence, max(positions) + 1 (traced), is longer than the original context.  A
decode step that crosses it re-runs the sequence (impl_jax/model.py `forward`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lmref.spec.config import RopeScaling
from lmref.spec.plan import Rope


def default_inv_freq(theta: float, rope_dim: int) -> np.ndarray:
    """[rope_dim / 2] inverse frequencies theta^(-2i / rope_dim), float64."""
    return 1.0 / theta ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)  # HF's form


def llama3_inv_freq(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama 3.1 scaling: wavelengths above orig/low_freq_factor are divided by `factor`,
    those below orig/high_freq_factor are kept, the band between is interpolated.  With
    high_freq_factor == low_freq_factor (Llama 4 Scout: both 1) there is no band and no
    smoothing is computed (it would divide by zero; Meta's llama-models models/llama4
    `apply_scaling` asserts no wavelength lands in it)."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_seq_len / s.high_freq_factor
    if s.high_freq_factor == s.low_freq_factor:  # no band between the two: divided or kept
        return np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    interpolated = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    return np.select([wavelen < high_freq_wavelen, wavelen > low_freq_wavelen],
                     [inv_freq, inv_freq / s.factor], interpolated)


def attention_factor(s: RopeScaling | None) -> float:
    """LongRoPE's factor on cos and sin: `attention_factor`, else sqrt(1 + ln(factor) / ln(O))
    (1 for factor <= 1; HF `_compute_longrope_parameters`); 1 for the other scalings."""
    if s is None or s.kind != "longrope":
        return 1.0
    if s.attention_factor is not None:
        return s.attention_factor
    return 1.0 if s.factor <= 1 else math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_seq_len))


def inv_freq(rope: Rope, long: bool = False) -> np.ndarray:
    """The [rotary_dim / 2] inverse frequencies of `rope`, scaling included; LongRoPE's divided
    by the long factors (`long`) or the short ones (HF `_compute_longrope_parameters`)."""
    freqs = default_inv_freq(rope.theta, rope.rotary_dim)
    s = rope.scaling
    if s is None:
        return freqs
    if s.kind == "linear":
        return freqs / s.factor
    if s.kind == "llama3":
        return llama3_inv_freq(freqs, s)
    if s.kind == "longrope":
        return freqs / np.asarray(s.long_factor if long else s.short_factor, dtype=np.float64)
    raise NotImplementedError(f"rope_scaling.kind {s.kind!r}")  # the feature check refuses it first


@functools.lru_cache(maxsize=32)
def rope_table(rope: Rope, context: int, long: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each [context, rotary_dim / 2] float64, read-only: row p is position p, times
    the attention factor (LongRoPE's; `long`: its long factors' table)."""
    angles = np.arange(context, dtype=np.float64)[:, None] * inv_freq(rope, long)[None, :]  # [context, r/2]
    scale = attention_factor(rope.scaling)
    cos, sin = np.cos(angles) * scale, np.sin(angles) * scale
    cos.setflags(write=False)
    sin.setflags(write=False)
    return cos, sin


def cos_sin(rope: Rope, positions: jax.Array, context: int, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin [S, r/2] in `dtype` at positions [S]; LongRoPE's from the long table when the
    sequence, max(positions) + 1, is longer than the original context."""
    cos_table, sin_table = rope_table(rope, context)
    cos, sin = jnp.asarray(cos_table, dtype)[positions], jnp.asarray(sin_table, dtype)[positions]  # [S, r/2]
    s = rope.scaling
    if s is None or s.kind != "longrope":
        return cos, sin
    long_cos, long_sin = rope_table(rope, context, long=True)
    is_long = positions.max() + 1 > s.original_max_seq_len  # traced: one branch-free choice
    return (jnp.where(is_long, jnp.asarray(long_cos, dtype)[positions], cos),
            jnp.where(is_long, jnp.asarray(long_sin, dtype)[positions], sin))


def _as_complex_pairs(rot: jax.Array, layout: str) -> jax.Array:
    """[B, S, H, r] -> [B, S, H, r/2] complex: pair i as one number, its first dim the real part."""
    r = rot.shape[-1]
    if layout == "halves":  # pair i is (x_i, x_{i + r/2})
        pairs = jnp.swapaxes(rot.reshape(*rot.shape[:-1], 2, r // 2), -1, -2)  # [B, S, H, r/2, 2]
    else:  # interleaved: pair i is (x_{2i}, x_{2i+1})
        pairs = rot.reshape(*rot.shape[:-1], r // 2, 2)  # [B, S, H, r/2, 2]
    return jax.lax.complex(pairs[..., 0], pairs[..., 1])


def _as_real_dims(turned: jax.Array, layout: str) -> jax.Array:
    """The inverse of _as_complex_pairs: [B, S, H, r/2] complex -> [B, S, H, r]."""
    pairs = jnp.stack([turned.real, turned.imag], axis=-1)  # [B, S, H, r/2, 2]
    if layout == "halves":
        pairs = jnp.swapaxes(pairs, -1, -2)  # [B, S, H, 2, r/2]: the real parts first, then the imaginary
    return pairs.reshape(*turned.shape[:-1], 2 * turned.shape[-1])  # [B, S, H, r]


def apply_rope(rope: Rope, x: jax.Array, positions: jax.Array, context: int) -> jax.Array:
    """Rotate x: [B, S, heads, head_dim] at positions: [S], each in [0, context) (RoPE on the
    first rotary_dim dims), in float32 at least, cast back to x's dtype.

    Written as Meta's llama `apply_rotary_emb` writes it, not as the golden does (which rotates
    the two halves with four products): each pair is a complex number, multiplied by
    cos + i sin; the layout says only which two dims form a pair."""
    r = rope.rotary_dim
    cos, sin = cos_sin(rope, positions, context, jnp.promote_types(x.dtype, jnp.float32))  # [S, r/2] each
    turn = jax.lax.complex(cos, sin)[None, :, None, :]  # [1, S, 1, r/2]: e^(i angle), scaled
    rot, rest = x[..., :r].astype(cos.dtype), x[..., r:]
    rotated = _as_real_dims(_as_complex_pairs(rot, rope.layout) * turn, rope.layout)  # [B, S, H, r]
    return jnp.concatenate([rotated.astype(x.dtype), rest], axis=-1)
