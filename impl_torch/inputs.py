"""Token checks for torch tensors: spec/inputs.py's rules and messages (`check_token_array`).

NumPy arrays and lists go through spec.inputs.check_tokens itself; tensors are checked
natively so that tokens already on a GPU need no round trip through NumPy.  The checks read
values (min, max), so they run eagerly: torch.compile steps around them.
"""

from __future__ import annotations

import numpy as np
import torch

from lmref.spec import inputs
from lmref.spec.config import ModelConfig


def _check_tensor(config: ModelConfig, tokens: torch.Tensor, past_len: int) -> None:
    """spec.inputs' rules, read off the tensor where it lies (no copy to the host but min, max)."""
    inputs.check_token_array(
        config, dtype=str(tokens.dtype).removeprefix("torch."),  # torch.float32 -> float32, NumPy's spelling
        integer=not (tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool),
        shape=tuple(tokens.shape), bounds=lambda: (int(tokens.min()), int(tokens.max())),
        first_where=lambda condition: tuple(int(i) for i in torch.nonzero(condition(tokens))[0]), past_len=past_len)


@torch.compiler.disable
def check_tokens(config: ModelConfig, tokens: object, *, past_len: int = 0, device=None) -> torch.Tensor:
    """Return `tokens` as an int64 [batch, seq] tensor on `device`, or raise `InputError`
    with the message spec.inputs.check_tokens gives for the same input."""
    if isinstance(tokens, torch.Tensor):
        _check_tensor(config, tokens, past_len)
        return tokens.to(device=device, dtype=torch.int64)
    array: np.ndarray = inputs.check_tokens(config, tokens, past_len=past_len)
    return torch.from_numpy(array).to(device)
