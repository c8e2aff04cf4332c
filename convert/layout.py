"""How canonical parameters map to a Hugging Face state dict: one `Entry` per HF tensor.

An entry says how one HF tensor is built from canonical tensors (spec/params.py):

    hf = transpose_if_linear( concat_last_axis(params[s] for s in sources)[..., perm] )

  sources  canonical names whose last axes (d_out, or a bias's length) are concatenated, in
           order: several for a fused projection (GPT-2's c_attn holds [wq | wk | wv]).
  linear   True for a torch `nn.Linear` weight, stored [d_out, d_in] (`y = x @ W.T`), the
           transpose of the canonical [d_in, d_out] (`y = x @ W`).  False for tensors with the
           same orientation on both sides: embeddings [vocab, d_model], norm vectors, biases,
           and GPT-2's `Conv1D` weights, which are [d_in, d_out] like ours
           (transformers `pytorch_utils.Conv1D`: `y = addmm(b, x, W)`).
  perm     an optional reordering of the concatenated canonical columns (a RoPE layout
           change, see convert/models/llama.py).

The inverse undoes the steps in reverse: transpose, undo the permutation, split at the
sources' widths.  Nothing is computed, values only move, so both directions are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from lmref.convert.errors import ConversionError
from lmref.spec.params import layout_mismatches


@dataclass(frozen=True)
class Entry:
    """One HF tensor and the canonical tensors it is made of (see the module docstring)."""

    hf: str
    sources: tuple[str, ...]
    linear: bool = False
    perm: tuple[int, ...] | None = None


def same(hf: str, source: str) -> Entry:
    """An HF tensor equal to one canonical tensor (same orientation)."""
    return Entry(hf, (source,))


def linear(hf: str, source: str, perm: tuple[int, ...] | None = None) -> Entry:
    """An `nn.Linear` weight: the transpose of one canonical projection."""
    return Entry(hf, (source,), linear=True, perm=perm)


def hf_shape(entry: Entry, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The HF tensor's shape, from the canonical shapes (nothing is allocated)."""
    first = shapes[entry.sources[0]]
    width = sum(shapes[s][-1] for s in entry.sources)
    shape = (*first[:-1], width)
    return shape[::-1] if entry.linear and len(shape) == 2 else shape


def expected_shapes(entries: list[Entry], shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """HF key -> shape for a whole table."""
    return {e.hf: hf_shape(e, shapes) for e in entries}


def to_hf_tensor(entry: Entry, params: dict[str, np.ndarray]) -> np.ndarray:
    """Build one HF tensor from the canonical params (a fresh C-contiguous array)."""
    x = np.concatenate([params[s] for s in entry.sources], axis=-1)  # [..., sum of widths]
    if entry.perm is not None:
        x = x[..., list(entry.perm)]
    if entry.linear and x.ndim == 2:
        x = x.T  # canonical [d_in, d_out] -> nn.Linear [d_out, d_in]
    return np.ascontiguousarray(x)


def from_hf_tensor(entry: Entry, tensor: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Split one HF tensor back into its canonical tensors (fresh C-contiguous arrays)."""
    x = tensor.T if entry.linear and tensor.ndim == 2 else tensor  # nn.Linear [d_out, d_in] -> [d_in, d_out]
    if entry.perm is not None:
        x = x[..., np.argsort(entry.perm)]  # the inverse permutation
    widths = [shapes[s][-1] for s in entry.sources]
    pieces = np.split(x, np.cumsum(widths)[:-1], axis=-1)  # [..., w_0], [..., w_1], ...
    return {s: np.ascontiguousarray(p) for s, p in zip(entry.sources, pieces, strict=True)}


def check_state_dict(expected: dict[str, tuple[int, ...]], tensors: dict[str, np.ndarray], where: str) -> None:
    """Raise ConversionError listing every missing, unexpected and misshaped key."""
    problems = layout_mismatches(expected, {k: tuple(v.shape) for k, v in tensors.items()}, unit=" key(s)")
    if problems:
        raise ConversionError(f"{where}: the weights do not match the config: " + " | ".join(problems))
