"""Which keys each query sees (spec/MATH.md, "Masks"), from token positions (JAX twin of
impl_numpy/masks.py).

    causal   k <= q
    sliding  q - W < k <= q                    (W keys, the query's own included)
    chunked  k <= q and k // C == q // C        (chunks start at position 0)

A key at position EMPTY_SLOT (-1: a cache slot holding nothing) is never visible.

Written from how far back each key lies, `back = q - k`, not with the golden's comparisons
(so a slip in one cannot pass in both): a key is seen at a distance of 0 or more, under W for
a sliding window, and no further back than the start of the query's chunk, q mod C.

The rule (`Mask`, from the layer's plan, spec/plan.py) is static; the positions may be
traced (a decode step's positions start at the cache's traced length), so every rule is
elementwise array arithmetic with no Python branch on a position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lmref.spec.plan import EMPTY_SLOT, Mask


def visible(mask: Mask, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """[Sq, Sk] True where the query at q_positions[i] sees the key at k_positions[j]."""
    q, k = q_positions[:, None], k_positions[None, :]  # [Sq, 1], [1, Sk]
    back = q - k  # [Sq, Sk]: how many positions before the query the key lies (< 0: after it)
    seen = back >= 0
    if mask.kind == "sliding":
        seen = seen & (back < mask.window)
    elif mask.kind == "chunked":
        seen = seen & (back <= jnp.remainder(q, mask.chunk))  # the query's chunk began q mod C positions back
    return seen & (k != EMPTY_SLOT)
