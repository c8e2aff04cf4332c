"""Checks on model inputs, shared by every backend so they all refuse the same things."""

from __future__ import annotations

import numpy as np

from lmref.spec.config import ModelConfig
from lmref.spec.errors import InputError


def check_tokens(config: ModelConfig, tokens: object, *, past_len: int = 0) -> np.ndarray:
    """Return `tokens` as an int64 [batch, seq] array, or raise `InputError` saying why not.

    `past_len` is the number of positions already in a KV cache: the new tokens take
    positions past_len .. past_len + seq - 1, which must stay inside the context.
    """
    array = np.asarray(tokens)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise InputError(f"tokens must be an integer array, got dtype {array.dtype}")
    if array.dtype == bool:
        raise InputError("tokens must be an integer array, got dtype bool")
    if array.ndim != 2:
        raise InputError(f"tokens must have shape [batch, seq], got shape {array.shape}")
    batch, seq = array.shape
    if batch == 0 or seq == 0:
        raise InputError(f"tokens must be non-empty, got shape {array.shape}")
    low, high = int(array.min()), int(array.max())
    if low < 0:
        where = tuple(int(i) for i in np.argwhere(array < 0)[0])
        raise InputError(f"token id {low} at {where} is negative")
    if high >= config.vocab_size:
        where = tuple(int(i) for i in np.argwhere(array >= config.vocab_size)[0])
        raise InputError(f"token id {high} at {where} is out of range for vocab_size {config.vocab_size}")
    if past_len + seq > config.max_seq_len:
        raise InputError(
            f"sequence of {seq} tokens after {past_len} cached positions exceeds the context "
            f"max_seq_len={config.max_seq_len}"
        )
    return array.astype(np.int64)
