"""The KV cache, torch twin of impl_numpy/cache.py, with static preallocated buffers.

Per layer, keys and values live in buffers [B, n_kv_heads, capacity, head_dim] allocated
once (HF `StaticCache` style; the head-major layout is the one SDPA and the ONNX
`past_key_values.{i}.key` convention use), and one buffer `positions` [capacity] records the
position each slot holds, EMPTY_SLOT (spec/plan.py) until a step writes it.  A step writes
its S new keys at slots [length, length + S) with their positions, and attention reads the
whole buffer: the masks (impl_torch/masks.py) read the slots' positions, so the slots not
written yet are hidden because they hold EMPTY_SLOT, not because of where they sit.  Static
shapes mean no reallocation per step and one graph for torch.compile and CUDA graphs, at
the cost of attending over `capacity` slots (choose a capacity that fits the run).

The positions are shared by the batch (the rows of a batch are not padded here); a padded
batch goes through the export's concat cache (export/decoder.py), whose positions are per row.
"""

from __future__ import annotations

import torch

from lmref.spec.config import ModelConfig
from lmref.spec.errors import InputError
from lmref.spec.plan import EMPTY_SLOT


class KVCache:
    """Per layer, keys and values [B, n_kv_heads, capacity, head_dim]; `positions` [capacity]
    (int64) the position each slot holds; `length` slots are filled."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], positions: torch.Tensor):
        self.keys, self.values, self.positions = keys, values, positions
        self.key_positions = positions[None]  # [1, capacity]: one view, handed to every layer
        self.length = 0

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, *, capacity: int | None = None,
              dtype: torch.dtype = torch.float32, device=None) -> KVCache:
        """Zeroed buffers for `batch` sequences of up to `capacity` (default: the context),
        every slot at EMPTY_SLOT."""
        capacity = config.max_seq_len if capacity is None else capacity
        if not 1 <= capacity <= config.max_seq_len:
            raise ValueError(f"capacity must be in [1, max_seq_len={config.max_seq_len}], got {capacity}")
        shape = (batch, config.n_kv_heads, capacity, config.head_dim)
        buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * config.n_layers)]
        positions = torch.full((capacity,), EMPTY_SLOT, dtype=torch.int64, device=device)
        return cls(buffers[0::2], buffers[1::2], positions)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    def check_room(self, batch: int, seq: int) -> None:
        """Raise `InputError` unless `batch` sequences of `seq` new tokens fit in the cache."""
        if batch != self.batch:
            raise InputError(f"tokens have batch {batch} but the KV cache was allocated for batch {self.batch}")
        if self.length + seq > self.capacity:
            raise InputError(f"sequence of {seq} tokens after {self.length} cached positions exceeds "
                             f"the KV cache capacity {self.capacity}")

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write this step's k, v [B, kv, S, hd], computed at `positions` [1, S], into slots
        length .. length + S - 1 of `layer`; return the whole buffers [B, kv, capacity, hd] and
        the slots' positions [1, capacity].  `length` moves on only when the model has run
        every layer (`advance`)."""
        if positions.shape[0] != 1:
            raise ValueError(f"the static KV cache records one position per slot for the whole batch: "
                             f"positions must be [1, S], got {list(positions.shape)}")
        stop = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : stop] = k
        self.values[layer][:, :, self.length : stop] = v
        self.positions[self.length : stop] = positions[0]
        return self.keys[layer], self.values[layer], self.key_positions

    def advance(self, n: int) -> None:
        self.length += n
