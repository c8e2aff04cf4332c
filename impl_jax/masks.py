"""Which keys each query sees (spec/MATH.md, "Masks"), from token positions (JAX twin of
impl_numpy/masks.py).

    causal   k <= q
    sliding  q - W < k <= q                    (W keys, the query's own included)
    chunked  k <= q and k // C == q // C        (chunks start at position 0)

A key at position EMPTY_SLOT (-1: a cache slot holding nothing) is never visible.

The rule (`Mask`, from the layer's plan, spec/plan.py) is static; the positions may be
traced (a decode step's positions start at the cache's traced length), so every rule is
elementwise array arithmetic with no Python branch on a position.
"""

from __future__ import annotations

import jax

from lmref.spec.plan import EMPTY_SLOT, Mask


def causal(q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """[Sq, Sk] True where k <= q."""
    return k_positions[None, :] <= q_positions[:, None]


def sliding(q_positions: jax.Array, k_positions: jax.Array, window: int) -> jax.Array:
    """[Sq, Sk] True where q - window < k <= q."""
    return causal(q_positions, k_positions) & (k_positions[None, :] > q_positions[:, None] - window)


def chunked(q_positions: jax.Array, k_positions: jax.Array, chunk: int) -> jax.Array:
    """[Sq, Sk] True where k <= q and both lie in the same chunk of `chunk` positions."""
    same_chunk = k_positions[None, :] // chunk == q_positions[:, None] // chunk  # floor division
    return causal(q_positions, k_positions) & same_chunk


def visible(mask: Mask, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """[Sq, Sk] True where the query at q_positions[i] sees the key at k_positions[j]."""
    if mask.kind == "sliding":
        rule = sliding(q_positions, k_positions, mask.window)
    elif mask.kind == "chunked":
        rule = chunked(q_positions, k_positions, mask.chunk)
    else:
        rule = causal(q_positions, k_positions)
    return rule & (k_positions != EMPTY_SLOT)[None, :]
