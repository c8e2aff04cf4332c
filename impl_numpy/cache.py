"""The KV cache: keys and values of every position seen so far, per layer, and the position
each slot holds (spec/plan.py: the masks read positions, never slot numbers)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lmref.spec.config import ModelConfig


@dataclass
class KVCache:
    """Per layer, keys and values [B, T, n_kv_heads, head_dim] and the positions [T] they were
    computed at; `length` is the number of positions taken in (the next one's position), and
    `tokens` their ids."""

    keys: list[np.ndarray | None] = field(default_factory=list)
    values: list[np.ndarray | None] = field(default_factory=list)
    positions: list[np.ndarray | None] = field(default_factory=list)
    length: int = 0
    tokens: np.ndarray | None = None  # [B, length]: the token ids taken in (LongRoPE re-runs them)

    @classmethod
    def empty(cls, config: ModelConfig) -> KVCache:
        n = config.n_layers
        return cls(keys=[None] * n, values=[None] * n, positions=[None] * n)

    @property
    def batch(self) -> int | None:
        """The batch size of the cached keys; None while the cache is empty."""
        return None if self.keys[0] is None else self.keys[0].shape[0]

    def append(self, layer: int, k: np.ndarray, v: np.ndarray,
               positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add this step's k, v [B, S, kv, hd] at `positions` [S] to `layer`; return all keys,
        values and their positions so far ([B, T, kv, hd], [B, T, kv, hd], [T])."""
        if self.keys[layer] is not None:
            k = np.concatenate([self.keys[layer], k], axis=1)  # [B, T + S, kv, hd]
            v = np.concatenate([self.values[layer], v], axis=1)
            positions = np.concatenate([self.positions[layer], positions])  # [T + S]
        self.keys[layer], self.values[layer], self.positions[layer] = k, v, positions
        return k, v, positions

    def take_tokens(self, tokens: np.ndarray) -> None:
        """Record the ids of a step's tokens [B, S] and move `length` on by S."""
        self.tokens = tokens if self.tokens is None else np.concatenate([self.tokens, tokens], axis=1)
        self.length += tokens.shape[1]

    def refill(self, other: KVCache) -> None:
        """Take `other`'s contents (a cache recomputed from scratch)."""
        self.keys, self.values, self.positions = other.keys, other.values, other.positions
        self.length, self.tokens = other.length, other.tokens
