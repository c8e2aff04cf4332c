"""The KV cache, torch twin of impl_numpy/cache.py, with static preallocated buffers.

Per layer, keys and values live in buffers [B, n_kv_heads, capacity, head_dim] allocated
once (HF `StaticCache` style; the head-major layout is the one SDPA and the ONNX
`past_key_values.{i}.key` convention use).  A step writes its S new positions at
[length, length + S) and attention reads the whole buffer: the slots not written yet hold
keys at positions >= length + S, after every query, so the causal mask hides them.  Static
shapes mean no reallocation per step and one graph for torch.compile and CUDA graphs, at
the cost of attending over `capacity` slots (choose a capacity that fits the run).
"""

from __future__ import annotations

import torch

from spec.config import ModelConfig
from spec.errors import InputError


class KVCache:
    """Per layer, keys and values [B, n_kv_heads, capacity, head_dim]; `length` positions
    of them are filled."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.keys, self.values = keys, values
        self.length = 0

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, *, capacity: int | None = None,
              dtype: torch.dtype = torch.float32, device=None) -> KVCache:
        """Zeroed buffers for `batch` sequences of up to `capacity` (default: the context)."""
        capacity = config.max_seq_len if capacity is None else capacity
        if not 1 <= capacity <= config.max_seq_len:
            raise ValueError(f"capacity must be in [1, max_seq_len={config.max_seq_len}], got {capacity}")
        shape = (batch, config.n_kv_heads, capacity, config.head_dim)
        buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * config.n_layers)]
        return cls(buffers[0::2], buffers[1::2])

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

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v [B, kv, S, hd] at positions length .. length + S - 1 of
        `layer`; return the whole buffers [B, kv, capacity, hd].  `length` moves on only when
        the model has run every layer (`advance`)."""
        stop = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : stop] = k
        self.values[layer][:, :, self.length : stop] = v
        return self.keys[layer], self.values[layer]

    def advance(self, n: int) -> None:
        self.length += n
