"""Checks on model inputs, shared by every backend so they all refuse the same things, with
the same messages.

The rules are written once, in `check_token_array`, over what any array library can tell
(its dtype's name, whether it is an integer dtype, its shape, its min and max, where a
condition first holds); `check_tokens` applies them to NumPy arrays and lists, and a backend
that checks its own tensors natively (impl_torch/inputs.py) applies them to those.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lmref.spec.config import ModelConfig
from lmref.spec.errors import InputError


def check_token_array(config: ModelConfig, *, dtype: str, integer: bool, shape: tuple[int, ...],
                      bounds: Callable[[], tuple[int, int]],
                      first_where: Callable[[Callable], tuple[int, ...]], past_len: int = 0) -> None:
    """Raise `InputError` unless the tokens are a non-empty integer [batch, seq] array of ids
    below vocab_size that fit the context after `past_len` cached positions.

    `dtype` is the dtype's NumPy spelling, `integer` whether it is an integer dtype (bool is
    not), `bounds()` the (min, max) of the ids, `first_where(condition)` the row-major index
    of the first id where `condition(array)` holds (as np.argwhere(...)[0])."""
    if not integer:
        raise InputError(f"tokens must be an integer array, got dtype {dtype}")
    if len(shape) != 2:
        raise InputError(f"tokens must have shape [batch, seq], got shape {shape}")
    batch, seq = shape
    if batch == 0 or seq == 0:
        raise InputError(f"tokens must be non-empty, got shape {shape}")
    low, high = bounds()
    if low < 0:
        raise InputError(f"token id {low} at {first_where(lambda t: t < 0)} is negative")
    if high >= config.vocab_size:
        where = first_where(lambda t: t >= config.vocab_size)
        raise InputError(f"token id {high} at {where} is out of range for vocab_size {config.vocab_size}")
    if past_len + seq > config.max_seq_len:
        raise InputError(f"sequence of {seq} tokens after {past_len} cached positions exceeds the context "
                         f"max_seq_len={config.max_seq_len}")


def check_tokens(config: ModelConfig, tokens: object, *, past_len: int = 0) -> np.ndarray:
    """Return `tokens` as an int64 [batch, seq] array, or raise `InputError` saying why not.

    `past_len` is the number of positions already in a KV cache: the new tokens take
    positions past_len .. past_len + seq - 1, which must stay inside the context.
    """
    array = np.asarray(tokens)
    check_token_array(
        config, dtype=str(array.dtype), integer=array.dtype != object and np.issubdtype(array.dtype, np.integer),
        shape=array.shape, bounds=lambda: (int(array.min()), int(array.max())),
        first_where=lambda condition: tuple(int(i) for i in np.argwhere(condition(array))[0]), past_len=past_len)
    return array.astype(np.int64)
