"""What a cached decode returns by definition (spec/MATH.md, "Decode"): the logits of step t are
those of a prefill of tokens 0..t.  For every model but LongRoPE that is the prefill of the whole
sequence; a LongRoPE model's factors depend on the sequence's length, so the twins' decode and
chunked-prefill tests compare with these prefix prefills (and the golden's own decode, which
re-runs the sequence when it crosses the original context)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def chunkwise(forward: Callable, tokens: np.ndarray, cuts: list[int]) -> np.ndarray:
    """Logits [B, S, V]: each chunk's positions from `forward` on the tokens up to its end
    (chunks split at `cuts`, as np.split cuts them)."""
    ends = [*cuts, tokens.shape[1]]
    starts = [0, *cuts]
    return np.concatenate([np.asarray(forward(tokens[:, :end]))[:, start:end] for start, end in zip(starts, ends)],
                          axis=1)


def stepwise(forward: Callable, tokens: np.ndarray, prompt_len: int) -> np.ndarray:
    """Logits [B, S, V] of a prefill of `prompt_len` tokens, then one token per step."""
    return chunkwise(forward, tokens, list(range(prompt_len, tokens.shape[1])))
