"""Attention masks and score biases of the export graph, built from `attention_mask`.

Keys are the cache slots 0 .. T-1 (T = past + S): the past ones, then the S new ones.  Query
i of the step sits in slot T - S + i.  A key is visible when it is causal *by slot* and
not padding:

    visible[b, q, k] = (k <= T - S + q) and attention_mask[b, k] == 1

(left padding gives padded slots position 0, so causality cannot be read off the position
ids).  A sliding-window layer would `&` a band `k > T - S + q - window` into this, built
explicitly (decomposed exports have dropped the window silently: sonos/tract#2323);
`VISIBLE_KEYS` maps each attention kind to its rule, and export/support.py refuses the
kinds that have none yet.

The additive bias uses the dtype's lowest finite value where a key is hidden, never -inf: a
fully masked row (a padded query) then softmaxes to a uniform, finite row instead of NaN
(pytorch#159973, microsoft/onnxscript#2992).

Positions of keys come from the mask as cumsum - 1 (clipped at 0), the HF convention that
`position_ids` follows too, so ALiBi sees the distance between real tokens.
"""

from __future__ import annotations

import torch

from impl_torch.alibi import alibi_bias, alibi_slopes
from spec.config import ModelConfig


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] int64 positions of the slots: 0, 1, ... over the real tokens, 0 on left padding."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]


def causal_slots(attention_mask: torch.Tensor, seq: int) -> torch.Tensor:
    """[B, 1, S, T] bool: key slot k visible to query i of this step (causal and not padding).

    `seq` is the step's symbolic length (input_ids.shape[1]); no Python branch reads a size,
    so one graph serves the prefill (past 0) and every decode step (quic/efficient-transformers#1263: `int(shape)`
    bakes a size into the graph; pytorch#143222: guards on data-dependent values).
    """
    total = attention_mask.shape[1]
    device = attention_mask.device
    k_slot = torch.arange(total, device=device)  # [T]
    q_slot = torch.arange(seq, device=device) + (total - seq)  # [S]: after the past slots
    causal = k_slot[None, :] <= q_slot[:, None]  # [S, T]
    return causal[None, None] & attention_mask.bool()[:, None, None, :]  # [B, 1, S, T]


VISIBLE_KEYS = {"global": causal_slots}


def score_bias(config: ModelConfig, kind: str, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """Additive score bias [B, H or 1, S, T] for layers of attention `kind`: the ALiBi bias (or
    0) on visible keys, finfo(dtype).min on hidden ones."""
    visible = VISIBLE_KEYS[kind](attention_mask, position_ids.shape[1])  # [B, 1, S, T]
    if config.position == "alibi":
        slopes = alibi_slopes(config.n_heads, config.alibi_max_bias)
        k_positions = positions_from_mask(attention_mask)  # [B, T]
        allowed = alibi_bias(slopes, position_ids, k_positions, dtype)  # [B, H, S, T]
    else:
        allowed = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(visible, allowed, torch.finfo(dtype).min)
