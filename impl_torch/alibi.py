"""ALiBi (Press, Smith & Lewis 2022), torch twin of impl_numpy/alibi.py.

Head h adds -slope_h * (q - k) to the score of query position q for key position k <= q.
For n heads, a power of two, slope_h = 2^(-max_bias * h / n), h = 1..n.  For other n, take
the n' = 2^floor(log2 n) slopes of n' heads, then the odd-indexed slopes of 2n' heads until
there are n (the paper's reference code; HF `build_alibi_tensor` in BLOOM and MPT): the
"press" rule.  "geometric" (AI2's OLMo, olmo/model.py `alibi_attention_bias`) keeps
2^(-max_bias * h / n) for every n.

The bias is built inside forward from the position ids, so a cached decode step (query
positions offset by the cache length) gets the same distances as a prefill.
"""

from __future__ import annotations

import math

import torch


def _power_of_two_slopes(n: int, max_bias: float) -> list[float]:
    return [2.0 ** (-max_bias * h / n) for h in range(1, n + 1)]


def alibi_slopes(n_heads: int, max_bias: float = 8.0, rule: str = "press") -> list[float]:
    """n_heads slopes (Python floats; the model holds them in impl_torch/constants.py), as
    impl_numpy.alibi_slopes."""
    if rule == "geometric":  # OLMo: 1 / 2^(h * max_bias / n) for h = 1..n
        return [1.0 / 2.0 ** (h * max_bias / n_heads) for h in range(1, n_heads + 1)]
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = _power_of_two_slopes(closest, max_bias)
    extra = _power_of_two_slopes(2 * closest, max_bias)[0::2]  # exponents 1, 3, 5, ... of 2n'
    return slopes + extra[: n_heads - closest]


def alibi_bias(slopes: torch.Tensor, q_positions: torch.Tensor, k_positions: torch.Tensor,
               dtype: torch.dtype) -> torch.Tensor:
    """[P, heads, Sq, Sk] additive score bias -slope * (q - k), from the slopes [heads],
    q_positions [P, Sq] and k_positions [P, Sk], computed in `dtype` (float32 or float64)."""
    m = slopes.to(device=q_positions.device, dtype=dtype)  # [heads]
    distance = (q_positions[:, :, None] - k_positions[:, None, :]).to(dtype)  # [P, Sq, Sk]
    return -m[None, :, None, None] * distance[:, None, :, :]  # [P, heads, Sq, Sk]
