"""Which keys each query sees (spec/MATH.md, "Masks"), from token positions: torch twin of
impl_numpy/masks.py.

    causal   k <= q
    sliding  q - W < k <= q                    (W keys, the query's own included)
    chunked  k <= q and k // C == q // C        (chunks start at position 0)

A key at position EMPTY_SLOT (-1: a cache slot holding nothing, a left-padding token) is
never visible.  Positions are int64 [P, S] with P 1 (shared by the batch) or the batch, so
one rule serves a prefill, the static cache, and the export's padded concat cache.
"""

from __future__ import annotations

import torch

from lmref.spec.plan import EMPTY_SLOT, Mask


def causal(q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """[P, Sq, Sk] True where k <= q; q_positions [P, Sq], k_positions [P, Sk]."""
    return k_positions[:, None, :] <= q_positions[:, :, None]


def sliding(q_positions: torch.Tensor, k_positions: torch.Tensor, window: int) -> torch.Tensor:
    """[P, Sq, Sk] True where q - window < k <= q."""
    return causal(q_positions, k_positions) & (k_positions[:, None, :] > q_positions[:, :, None] - window)


def chunked(q_positions: torch.Tensor, k_positions: torch.Tensor, chunk: int) -> torch.Tensor:
    """[P, Sq, Sk] True where k <= q and both lie in the same chunk of `chunk` positions."""
    same_chunk = torch.div(k_positions, chunk, rounding_mode="floor")[:, None, :] == \
        torch.div(q_positions, chunk, rounding_mode="floor")[:, :, None]  # [P, Sq, Sk]
    return causal(q_positions, k_positions) & same_chunk


def visible(mask: Mask, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
    """[P, 1, Sq, Sk] True where the query at q_positions[p, i] sees the key at k_positions[p, j]
    (the 1 broadcasts over the heads)."""
    if mask.kind == "sliding":
        rule = sliding(q_positions, k_positions, mask.window)
    elif mask.kind == "chunked":
        rule = chunked(q_positions, k_positions, mask.chunk)
    else:
        rule = causal(q_positions, k_positions)
    written = (k_positions != EMPTY_SLOT)[:, None, :]  # [P, 1, Sk]
    return (rule & written)[:, None]  # [P, 1, Sq, Sk]
