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
           change, see convert/models/llama.py; a projection fused per head,
           `per_head_order`: GPT-NeoX's query_key_value).

Mixtures of experts hold E experts stacked on a leading axis (`layers.{i}.mlp.experts.w_up`
[E, d, f]); checkpoints store them one tensor per expert or all in one:

  expert   the HF tensor is expert `expert` of the stacked sources (Mixtral's
           `experts.{e}.w1`, Qwen-MoE's `experts.{e}.gate_proj`): index it first.
  flatten  the HF tensor is every expert at once, [E, r, c] (after the transpose, which
           swaps the last two axes) stored as [E * r, c] (DBRX's `experts.mlp.w1`).

A convolution's weight keeps its kernel axes:

  unflatten  after the transpose, the last axis is stored as these axes: CLIP's patch
             convolution `patch_embedding.weight` [Dv, C, p, p] is the canonical
             `vision.patch_embed` [C*p*p, Dv] transposed to [Dv, C*p*p], its columns in
             (channel, row, column) order (spec/vision.py), i.e. the row-major flattening.

The inverse undoes the steps in reverse: flatten the kernel axes back, unflatten the experts,
transpose, undo the permutation, split at the sources' widths, and stack the experts
(`canonical_params`).  Nothing is computed, values only move, so both directions are exact.
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
    expert: int | None = None
    flatten: bool = False
    unflatten: tuple[int, ...] | None = None


def same(hf: str, source: str) -> Entry:
    """An HF tensor equal to one canonical tensor (same orientation)."""
    return Entry(hf, (source,))


def linear(hf: str, source: str, perm: tuple[int, ...] | None = None) -> Entry:
    """An `nn.Linear` weight: the transpose of one canonical projection."""
    return Entry(hf, (source,), linear=True, perm=perm)


def conv(hf: str, source: str, kernel: tuple[int, ...]) -> Entry:
    """A convolution's weight [d_out, *kernel] (`nn.Conv2d`: [out, in, kh, kw]): the transpose of
    one canonical [prod(kernel), d_out] matrix, its last axis unflattened into `kernel`."""
    return Entry(hf, (source,), linear=True, unflatten=tuple(kernel))


def expert_linear(hf: str, source: str, expert: int) -> Entry:
    """An `nn.Linear` weight of one expert: the transpose of `source[expert]`."""
    return Entry(hf, (source,), linear=True, expert=expert)


def per_head_order(widths: tuple[int, ...], n_heads: int) -> tuple[int, ...]:
    """The `perm` of a projection fused per head: for each head, its slice of every source in
    turn.  GPT-NeoX's `query_key_value` (and BLOOM's) is `.view(..., n_heads, 3 * head_dim)`
    then `.chunk(3)` (transformers `GPTNeoXAttention.forward`): head h's q columns, then its k,
    then its v, where the concatenated canonical columns are all of q, then k, then v.
    `n_heads` may count groups rather than heads: Falcon's query_key_value is, per KV group,
    its q heads, then its k head, then its v head (`per_head_order((q, kv, kv), n_kv_heads)`).
    Every width must split into `n_heads` equal slices."""
    if any(width % n_heads for width in widths):
        raise ConversionError(f"fused widths {widths} do not split into {n_heads} heads")
    starts = np.cumsum((0, *widths[:-1]))  # where each source's columns begin
    sizes = [width // n_heads for width in widths]  # one head's slice of each source
    order = [np.arange(start + h * size, start + (h + 1) * size)
             for h in range(n_heads) for start, size in zip(starts, sizes, strict=True)]
    return tuple(np.concatenate(order).tolist())


def hf_shape(entry: Entry, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The HF tensor's shape, from the canonical shapes (nothing is allocated)."""
    first = shapes[entry.sources[0]][0 if entry.expert is None else 1 :]
    width = sum(shapes[s][-1] for s in entry.sources)
    shape = (*first[:-1], width)
    if entry.linear:
        shape = (*shape[:-2], shape[-1], shape[-2])
    if entry.unflatten is not None:
        shape = (*shape[:-1], *entry.unflatten)
    return (shape[0] * shape[1], shape[2]) if entry.flatten else shape


def expected_shapes(entries: list[Entry], shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """HF key -> shape for a whole table."""
    return {e.hf: hf_shape(e, shapes) for e in entries}


def to_hf_tensor(entry: Entry, params: dict[str, np.ndarray]) -> np.ndarray:
    """Build one HF tensor from the canonical params (a fresh C-contiguous array)."""
    parts = [params[s] if entry.expert is None else params[s][entry.expert] for s in entry.sources]
    x = np.concatenate(parts, axis=-1)  # [..., sum of widths]
    if entry.perm is not None:
        x = x[..., list(entry.perm)]
    if entry.linear:
        x = np.swapaxes(x, -1, -2)  # canonical [..., d_in, d_out] -> nn.Linear [..., d_out, d_in]
    if entry.unflatten is not None:
        x = x.reshape(*x.shape[:-1], *entry.unflatten)  # [d_out, C*p*p] -> [d_out, C, p, p]
    if entry.flatten:
        x = x.reshape(-1, x.shape[-1])  # [E, r, c] -> [E * r, c]
    return np.ascontiguousarray(x)


def from_hf_tensor(entry: Entry, tensor: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Split one HF tensor back into its canonical tensors (fresh C-contiguous arrays; one
    expert's slice of them for an `expert` entry)."""
    x = tensor
    if entry.unflatten is not None:
        x = x.reshape(*x.shape[: -len(entry.unflatten)], -1)  # [d_out, C, p, p] -> [d_out, C*p*p]
    if entry.flatten:
        x = x.reshape(shapes[entry.sources[0]][0], -1, x.shape[-1])  # [E * r, c] -> [E, r, c]
    if entry.linear:
        x = np.swapaxes(x, -1, -2)  # nn.Linear [..., d_out, d_in] -> [..., d_in, d_out]
    if entry.perm is not None:
        x = x[..., np.argsort(entry.perm)]  # the inverse permutation
    widths = [shapes[s][-1] for s in entry.sources]
    pieces = np.split(x, np.cumsum(widths)[:-1], axis=-1)  # [..., w_0], [..., w_1], ...
    return {s: np.ascontiguousarray(p) for s, p in zip(entry.sources, pieces, strict=True)}


def canonical_params(table: list[Entry], tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]
                     ) -> dict[str, np.ndarray]:
    """The canonical tensors of a whole table: each entry split back, experts stacked in order."""
    params: dict[str, np.ndarray] = {}
    experts: dict[str, dict[int, np.ndarray]] = {}
    for entry in table:
        pieces = from_hf_tensor(entry, tensors[entry.hf], shapes)
        if entry.expert is None:
            params |= pieces
        else:
            for name, piece in pieces.items():
                experts.setdefault(name, {})[entry.expert] = piece
    return params | {name: np.stack([by[e] for e in sorted(by)]) for name, by in experts.items()}


def check_state_dict(expected: dict[str, tuple[int, ...]], tensors: dict[str, np.ndarray], where: str) -> None:
    """Raise ConversionError listing every missing, unexpected and misshaped key."""
    problems = layout_mismatches(expected, {k: tuple(v.shape) for k, v in tensors.items()}, unit=" key(s)")
    if problems:
        raise ConversionError(f"{where}: the weights do not match the config: " + " | ".join(problems))
