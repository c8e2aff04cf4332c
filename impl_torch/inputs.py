"""Token checks for torch tensors, twin of spec/inputs.py with the very same messages.

NumPy arrays and lists go through spec.inputs.check_tokens itself; tensors are checked
natively so that tokens already on a GPU need no round trip through NumPy.  The checks read
values (min, max), so they run eagerly: torch.compile steps around them.
"""

from __future__ import annotations

import numpy as np
import torch

from lmref.spec import inputs
from lmref.spec.config import ModelConfig
from lmref.spec.errors import InputError


def _first_index(condition: torch.Tensor) -> tuple[int, ...]:
    """Row-major index of the first True entry (as np.argwhere(...)[0])."""
    return tuple(int(i) for i in torch.nonzero(condition)[0])


def _check_tensor(config: ModelConfig, tokens: torch.Tensor, past_len: int) -> None:
    dtype = str(tokens.dtype).removeprefix("torch.")  # torch.float32 -> float32, NumPy's spelling
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise InputError(f"tokens must be an integer array, got dtype {dtype}")
    if tokens.ndim != 2:
        raise InputError(f"tokens must have shape [batch, seq], got shape {tuple(tokens.shape)}")
    batch, seq = tokens.shape
    if batch == 0 or seq == 0:
        raise InputError(f"tokens must be non-empty, got shape {tuple(tokens.shape)}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0:
        raise InputError(f"token id {low} at {_first_index(tokens < 0)} is negative")
    if high >= config.vocab_size:
        where = _first_index(tokens >= config.vocab_size)
        raise InputError(f"token id {high} at {where} is out of range for vocab_size {config.vocab_size}")
    if past_len + seq > config.max_seq_len:
        raise InputError(
            f"sequence of {seq} tokens after {past_len} cached positions exceeds the context "
            f"max_seq_len={config.max_seq_len}"
        )


@torch.compiler.disable
def check_tokens(config: ModelConfig, tokens: object, *, past_len: int = 0, device=None) -> torch.Tensor:
    """Return `tokens` as an int64 [batch, seq] tensor on `device`, or raise `InputError`
    with the message spec.inputs.check_tokens gives for the same input."""
    if isinstance(tokens, torch.Tensor):
        _check_tensor(config, tokens, past_len)
        return tokens.to(device=device, dtype=torch.int64)
    array: np.ndarray = inputs.check_tokens(config, tokens, past_len=past_len)
    return torch.from_numpy(array).to(device)
