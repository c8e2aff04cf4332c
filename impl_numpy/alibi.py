"""ALiBi: attention with linear biases (Press, Smith & Lewis 2022, "Train Short, Test Long").

Head h adds -slope_h * (q - k) to the score of query position q for key position k <= q.
For n heads, a power of two, slope_h = 2^(-max_bias * h / n), h = 1..n (max_bias 8).  For
other n, take the n' = 2^floor(log2 n) slopes of n' heads, then the odd-indexed slopes of
2n' heads (2^(-max_bias * h / 2n') for h = 1, 3, 5, ...) until there are n of them (the
paper's reference code; HF `build_alibi_tensor` in BLOOM and MPT compute the same values).
That is the "press" rule.  The "geometric" rule (AI2's OLMo code, olmo/model.py
`alibi_attention_bias`: m = arange(1, n + 1) * alibi_bias_max / n, slope 1 / 2^m) keeps
2^(-max_bias * h / n) for every n; the two agree on powers of two only.

BLOOM adds +slope * k instead; within a softmax row that differs by a constant, which
softmax ignores, so the two are the same attention.
"""

from __future__ import annotations

import math

import numpy as np


def _power_of_two_slopes(n: int, max_bias: float) -> list[float]:
    return [2.0 ** (-max_bias * h / n) for h in range(1, n + 1)]


def alibi_slopes(n_heads: int, max_bias: float = 8.0, rule: str = "press") -> np.ndarray:
    """[n_heads] slopes: "geometric" 2^(-max_bias * h / n) for every n; "press" the same for
    powers of two, interleaved from 2n' heads otherwise."""
    if rule == "geometric":
        return np.array(_power_of_two_slopes(n_heads, max_bias), dtype=np.float64)
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = _power_of_two_slopes(closest, max_bias)
    extra = _power_of_two_slopes(2 * closest, max_bias)[0::2]  # exponents 1, 3, 5, ... of 2n'
    return np.array(slopes + extra[: n_heads - closest], dtype=np.float64)


def alibi_bias(slopes: np.ndarray, q_positions: np.ndarray, k_positions: np.ndarray) -> np.ndarray:
    """[heads, Sq, Sk] additive score bias -slope * (q - k)."""
    distance = q_positions[:, None] - k_positions[None, :]  # [Sq, Sk]
    return -slopes[:, None, None] * distance[None, :, :]
