"""ALiBi: attention with linear biases (Press, Smith & Lewis 2022, "Train Short, Test Long").

Head h adds -slope_h * (q - k) to the score of query position q for key position k <= q.
For n heads, a power of two, slope_h = 2^(-max_bias * h / n), h = 1..n (max_bias 8).  For
other n, take the n' = 2^floor(log2 n) slopes of n' heads, then the odd-indexed slopes of
2n' heads (2^(-max_bias * h / 2n') for h = 1, 3, 5, ...) until there are n of them (the
paper's reference code; HF `build_alibi_tensor` in BLOOM and MPT compute the same values):
the "press" rule.  "geometric" (AI2's OLMo, olmo/model.py `alibi_attention_bias`) keeps
2^(-max_bias * h / n) for every n.

The slopes depend on the static config only: they are computed on the host in float64.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def alibi_slopes(n_heads: int, max_bias: float = 8.0, rule: str = "press") -> np.ndarray:
    """[n_heads] slopes: geometric, or for "press" interleaved from 2n' heads unless n is a power of two."""
    if rule == "geometric":
        return 2.0 ** (-max_bias * np.arange(1, n_heads + 1, dtype=np.float64) / n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    exponents = list(range(1, closest + 1))  # slopes of n' heads: 2^(-max_bias * h / n')
    exponents_2n = [h / 2 for h in range(1, 2 * closest + 1, 2)]  # of 2n' heads, h = 1, 3, 5, ...
    chosen = (exponents + exponents_2n)[:n_heads]
    return 2.0 ** (-max_bias * np.array(chosen, dtype=np.float64) / closest)


def alibi_bias(slopes: np.ndarray, q_positions: jax.Array, k_positions: jax.Array,
               dtype: jnp.dtype) -> jax.Array:
    """[heads, Sq, Sk] additive score bias -slope * (q - k), in `dtype`."""
    distance = (q_positions[:, None] - k_positions[None, :]).astype(dtype)  # [Sq, Sk]
    return -jnp.asarray(slopes, dtype)[:, None, None] * distance[None, :, :]
