"""Token and image checks for torch tensors: spec/inputs.py's rules and messages
(`check_token_array`), spec/vision.py's `check_images`.

NumPy arrays and lists go through spec's checks themselves; tensors are checked natively so
that tokens and images already on a GPU need no round trip through NumPy (images that fail
are handed to spec for its message).  The checks read values (min, max, the placeholders'
count, finiteness), so they run eagerly: torch.compile steps around them.
"""

from __future__ import annotations

import numpy as np
import torch

from lmref.spec import inputs, vision
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


def _host(x: object) -> object:
    """A tensor as a NumPy array on the host (bfloat16, which NumPy lacks, as float32: the same
    values, shape and finiteness); anything else as it is (spec reads it with np.asarray)."""
    if not isinstance(x, torch.Tensor):
        return x
    x = x.detach().cpu()
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()


def _plainly_valid(config: ModelConfig, tokens: torch.Tensor, images: torch.Tensor, prompt_len: int | None) -> bool:
    """Whether spec.vision.check_images accepts the tensor `images` with `tokens`, read off the
    tensors where they lie (a few reductions, no copy to the host)."""
    v = config.vision
    if v is None or not images.is_floating_point() or images.ndim != 4:
        return False
    if tuple(images.shape[1:]) != (v.n_channels, v.image_size, v.image_size):
        return False
    placeholders = tokens == v.image_token_id  # [B, S]
    if int(placeholders.sum()) != images.shape[0] * v.tokens_per_image:
        return False
    if prompt_len is not None and bool(placeholders[:, prompt_len:].any()):
        return False
    return bool(torch.isfinite(images).all())


@torch.compiler.disable
def check_images(config: ModelConfig, tokens: torch.Tensor, pixel_values: object, *, prompt_len: int | None = None,
                 device=None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """`pixel_values` (tensor, array or list [N, C, H, W]) as a tensor of `dtype` on `device`
    (None without images), or the `InputError` spec.vision.check_images raises for the same
    input and the checked int64 tokens [B, S].  A tensor that passes is checked where it lies;
    anything else, and a tensor that fails, is checked by spec itself on the host, so the
    messages are the golden's."""
    v = config.vision
    if pixel_values is None and (v is None or not bool((tokens == v.image_token_id).any())):
        return None  # no images, and no placeholder asking for one
    if isinstance(pixel_values, torch.Tensor) and _plainly_valid(config, tokens, pixel_values, prompt_len):
        return pixel_values.to(device=device, dtype=dtype)
    images = vision.check_images(config, _host(tokens), _host(pixel_values), prompt_len=prompt_len)
    return None if images is None else torch.tensor(images, device=device, dtype=dtype)
