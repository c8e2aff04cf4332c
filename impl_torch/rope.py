"""Rotary position embedding (Su et al. 2021, RoFormer), torch twin of impl_numpy/rope.py.

Each layer's RoPE comes from its plan (spec/plan.py, `Rope`: theta, scaling, rotated dims,
layout); the model computes cos / sin once per distinct Rope per forward.

inv_freq_i = theta^(-2i / r) for i < r/2, r = rope.rotary_dim (the first r dims of a head
rotate, the rest pass through: GPT-NeoX / Phi partial rotary).  Position p rotates pair i
by p * inv_freq_i.  Layouts:

  halves      (x_i, x_{i + r/2})   HF `rotate_half`, GPT-NeoX, HF LLaMA checkpoints
  interleaved (x_{2i}, x_{2i+1})   GPT-J `rotate_every_two`, Meta's original LLaMA code

LongRoPE (spec/MATH.md, "LongRoPE") divides frequency i by the long factor for every position of
a sequence longer than the original context O, by the short one otherwise, per row of the
positions (a padded row's length is that of its real tokens), and scales cos and sin by the
attention factor.  A decode step that crosses O re-runs the sequence (impl_torch/model.py).

Everything is computed inside forward from the position ids (no cos/sin cache sized by the
first input: such caches break ONNX export, see export/exporter.py).  The
angles are computed in float32 (float64 for a float64 model) whatever the model's dtype,
as HF does (`LlamaRotaryEmbedding` disables autocast and uses float32): a bf16 angle would
be off by more than a radian at position 1000.
"""

from __future__ import annotations

import math

import torch

from lmref.impl_torch.constants import ConfigTensors
from lmref.impl_torch.norms import compute_dtype
from lmref.spec.config import RopeScaling
from lmref.spec.plan import Rope


def default_inv_freq(theta: float, rope_dim: int, dtype: torch.dtype, device) -> torch.Tensor:
    """[rope_dim / 2] inverse frequencies theta^(-2i / rope_dim)."""
    exponents = torch.arange(0, rope_dim, 2, dtype=dtype, device=device) / rope_dim
    return 1.0 / theta**exponents


def llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1 scaling (HF `_compute_llama3_parameters`): wavelengths above
    orig/low_freq_factor are divided by `factor`, those below orig/high_freq_factor are kept,
    the band between is interpolated.  With high_freq_factor == low_freq_factor (Llama 4
    Scout: both 1) there is no band, and no smoothing is computed (it would divide by zero;
    Meta's llama-models models/llama4 `apply_scaling` asserts no wavelength lands in it)."""
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_seq_len / s.high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    if s.high_freq_factor == s.low_freq_factor:  # no band between the two: nothing is smoothed
        return scaled
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, smoothed, scaled)


def attention_factor(s: RopeScaling | None) -> float:
    """LongRoPE's factor on cos and sin: `attention_factor`, else sqrt(1 + ln(factor) / ln(O))
    (1 for factor <= 1; HF `_compute_longrope_parameters`); 1 for the other scalings."""
    if s is None or s.kind != "longrope":
        return 1.0
    if s.attention_factor is not None:
        return s.attention_factor
    return 1.0 if s.factor <= 1 else math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_seq_len))


def inv_freq(rope: Rope, dtype: torch.dtype, device) -> torch.Tensor:
    """The [rotary_dim / 2] inverse frequencies of `rope`, scaling included (LongRoPE's depend on
    the sequence: `row_inv_freq`)."""
    freqs = default_inv_freq(rope.theta, rope.rotary_dim, dtype, device)
    s = rope.scaling
    if s is None:
        return freqs
    if s.kind == "linear":
        return freqs / s.factor
    if s.kind == "llama3":
        return llama3_inv_freq(freqs, s)
    raise NotImplementedError(f"rope_scaling.kind {s.kind!r}")  # the feature check refuses it first


def row_inv_freq(rope: Rope, positions: torch.Tensor, dtype: torch.dtype, constants: ConfigTensors) -> torch.Tensor:
    """[P, 1, 1, r/2] inverse frequencies of each row of `positions` [P, S]: LongRoPE's
    theta^(-2i/r) / factor_i with the long factors where the row's length max(positions) + 1
    exceeds original_max_seq_len, else the short ones (HF `longrope_frequency_update`, per row;
    the authors' `Phi3LongRoPEScaledRotaryEmbedding`); [1, 1, 1, r/2] for the other scalings."""
    s = rope.scaling
    if s is None or s.kind != "longrope":
        return inv_freq(rope, dtype, positions.device)[None, None, None, :]
    plain = default_inv_freq(rope.theta, rope.rotary_dim, dtype, positions.device)
    short_factor, long_factor = constants.longrope_factors(rope, positions.device, dtype)  # [r/2] each
    short, long = plain / short_factor, plain / long_factor
    is_long = (positions.amax(dim=-1) + 1 > s.original_max_seq_len)[:, None, None, None]  # [P, 1, 1, 1]
    return torch.where(is_long, long, short)  # [P, 1, 1, r/2]


def rope_cos_sin(rope: Rope, positions: torch.Tensor, dtype: torch.dtype,
                 constants: ConfigTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [P, 1, S, r/2] of the angles at `positions` [P, S] (P is 1 or the batch),
    times LongRoPE's attention factor (its factors from the model's `constants`)."""
    compute = compute_dtype(dtype)
    freqs = row_inv_freq(rope, positions, compute, constants)  # [P or 1, 1, 1, r/2]
    angles = positions.to(compute)[:, None, :, None] * freqs  # [P, 1, S, r/2]
    scale = attention_factor(rope.scaling)
    if scale == 1.0:
        return torch.cos(angles), torch.sin(angles)
    return torch.cos(angles) * scale, torch.sin(angles) * scale


def apply_rope(rope: Rope, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x: [B, heads, S, head_dim] by cos, sin [P, 1, S, r/2] (first rotary_dim dims).

    The rotation runs in the angles' dtype (float32 at least) and is cast back to x's dtype.
    """
    r = rope.rotary_dim
    rot, rest = x[..., :r].to(cos.dtype), x[..., r:]
    if rope.layout == "halves":
        x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]  # pair i is (x_i, x_{i + r/2})
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # [B, H, S, r]
    else:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]  # pair i is (x_{2i}, x_{2i+1})
        pairs = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # [B, H, S, r/2, 2]
        rotated = pairs.flatten(-2)  # [B, H, S, r]: re-interleave
    return torch.cat([rotated.to(x.dtype), rest], dim=-1)
