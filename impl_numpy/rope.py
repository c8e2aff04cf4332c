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


def inv_freq(rope: Rope) -> np.ndarray:
    """The [rotary_dim / 2] inverse frequencies of `rope`, scaling included."""
    freqs = default_inv_freq(rope.theta, rope.rotary_dim)
    s = rope.scaling
    if s is None:
        return freqs
    if s.kind == "linear":
        return freqs / s.factor
    if s.kind == "llama3":
        return llama3_inv_freq(freqs, s)
    raise NotImplementedError(f"rope_scaling.kind {s.kind!r}")  # the feature check refuses it first


def apply_rope(rope: Rope, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rotate x: [B, S, heads, head_dim] at positions: [S] (RoPE on the first rotary_dim dims)."""
    r = rope.rotary_dim
    angles = positions[:, None].astype(np.float64) * inv_freq(rope)[None, :]  # [S, r/2]
    cos = np.cos(angles).astype(x.dtype)[None, :, None, :]  # [1, S, 1, r/2]
    sin = np.sin(angles).astype(x.dtype)[None, :, None, :]
    rot, rest = x[..., :r], x[..., r:]
    if rope.layout == "halves":
        x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]  # pair i is (x_i, x_{i + r/2})
        rotated = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]  # pair i is (x_{2i}, x_{2i+1})
        pairs = np.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)  # [B, S, H, r/2, 2]
        rotated = pairs.reshape(rot.shape)  # [B, S, H, r]: re-interleave
    return np.concatenate([rotated, rest], axis=-1)
