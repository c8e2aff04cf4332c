"""The KV cache: keys and values of every position seen so far, per layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spec.config import ModelConfig


@dataclass
class KVCache:
    """Per layer, keys and values [B, T, n_kv_heads, head_dim]; `length` is T."""

    keys: list[np.ndarray | None] = field(default_factory=list)
    values: list[np.ndarray | None] = field(default_factory=list)
    length: int = 0

    @classmethod
    def empty(cls, config: ModelConfig) -> KVCache:
        return cls(keys=[None] * config.n_layers, values=[None] * config.n_layers)

    @property
    def batch(self) -> int | None:
        """The batch size of the cached keys; None while the cache is empty."""
        return None if self.keys[0] is None else self.keys[0].shape[0]

    def append(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add this step's k, v [B, S, kv, hd] to `layer`; return all keys and values so far."""
        if self.keys[layer] is not None:
            k = np.concatenate([self.keys[layer], k], axis=1)  # [B, T + S, kv, hd]
            v = np.concatenate([self.values[layer], v], axis=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v
