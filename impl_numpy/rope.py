"""Rotary position embedding (Su et al. 2021, RoFormer) and its frequency scalings.

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

longrope (Phi-3 128k; spec/MATH.md, "LongRoPE") divides frequency i by short_factor[i] or
long_factor[i]: the long factors for EVERY position of a sequence longer than the original
context O, the short ones otherwise, and multiplies cos and sin by the attention factor.  The
sequence's length is that of the positions seen, max(positions) + 1.  A decode step that
takes the sequence past O changes the factors of every earlier position, so the cache is
recomputed (impl_numpy/model.py `forward`, spec/plan.py `crosses_original_context`).
"""

from __future__ import annotations

import math

import numpy as np

from lmref.spec.config import RopeScaling
from lmref.spec.plan import Rope


def default_inv_freq(theta: float, rope_dim: int) -> np.ndarray:
    """[rope_dim / 2] inverse frequencies theta^(-2i / rope_dim)."""
    return 1.0 / theta ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)


def llama3_inv_freq(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama 3.1 scaling: wavelengths above orig/low_freq_factor are divided by `factor`,
    those below orig/high_freq_factor are kept, the band between is interpolated."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_seq_len / s.high_freq_factor
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    if s.high_freq_factor == s.low_freq_factor:  # Llama 4 Scout: no band between the two (llama-models'
        return scaled                            # apply_scaling asserts a wavelength never lands in it)
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(in_band, smoothed, scaled)


def is_longrope(rope: Rope | None) -> bool:
    return rope is not None and rope.scaling is not None and rope.scaling.kind == "longrope"


def longrope_inv_freq(rope: Rope, seq_len: int) -> np.ndarray:
    """theta^(-2i/r) / factor_i, factor = long_factor when seq_len > original_max_seq_len, else
    short_factor (HF `_compute_longrope_parameters`: `1 / (ext_factors * base**(2i/dim))`;
    microsoft/Phi-3-mini-128k-instruct `Phi3LongRoPEScaledRotaryEmbedding`)."""
    s = rope.scaling
    factors = s.long_factor if seq_len > s.original_max_seq_len else s.short_factor
    return default_inv_freq(rope.theta, rope.rotary_dim) / np.asarray(factors, dtype=np.float64)


def attention_factor(s: RopeScaling | None) -> float:
    """What cos and sin are multiplied by: LongRoPE's `attention_factor`, or when it is not
    given sqrt(1 + ln(factor) / ln(original_max_seq_len)) (1 for factor <= 1), in both
    regimes (HF `_compute_longrope_parameters`; Phi-3-mini-128k: sqrt(1 + ln 32 / ln 4096));
    1 for every other scaling."""
    if s is None or s.kind != "longrope":
        return 1.0
    if s.attention_factor is not None:
        return s.attention_factor
    return 1.0 if s.factor <= 1 else math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_seq_len))


def inv_freq(rope: Rope, seq_len: int | None = None) -> np.ndarray:
    """The [rotary_dim / 2] inverse frequencies of `rope`, scaling included; LongRoPE's depend
    on the length `seq_len` of the sequence."""
    freqs = default_inv_freq(rope.theta, rope.rotary_dim)
    s = rope.scaling
    if s is None:
        return freqs
    if s.kind == "linear":
        return freqs / s.factor
    if s.kind == "llama3":
        return llama3_inv_freq(freqs, s)
    if s.kind == "longrope":
        return longrope_inv_freq(rope, seq_len)
    raise NotImplementedError(f"rope_scaling.kind {s.kind!r}")  # the feature check refuses it first


def rotate(rope: Rope, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate pair i of x: [B, S, heads, head_dim] by the angles whose cos, sin [S, r/2] are
    given (the first rotary_dim dims; the rest pass through)."""
    r = rope.rotary_dim
    cos, sin = cos.astype(x.dtype)[None, :, None, :], sin.astype(x.dtype)[None, :, None, :]  # [1, S, 1, r/2]
    rot, rest = x[..., :r], x[..., r:]
    if rope.layout == "halves":
        x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]  # pair i is (x_i, x_{i + r/2})
        rotated = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]  # pair i is (x_{2i}, x_{2i+1})
        pairs = np.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # [B, S, H, r/2, 2]
        rotated = pairs.reshape(rot.shape)  # [B, S, H, r]: re-interleave
    return np.concatenate([rotated, rest], axis=-1)


def apply_rope(rope: Rope, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rotate x: [B, S, heads, head_dim] at positions: [S] (RoPE on the first rotary_dim dims),
    in a sequence of max(positions) + 1 positions; cos and sin times the attention factor."""
    freqs = inv_freq(rope, int(positions.max()) + 1)
    angles = positions[:, None].astype(np.float64) * freqs[None, :]  # [S, r/2]
    scale = attention_factor(rope.scaling)
    return rotate(rope, x, np.cos(angles) * scale, np.sin(angles) * scale)

