"""The KV cache: fixed-size key and value buffers per layer plus a length index.

Jit-friendly by construction: the buffers have the static shape [B, max_seq_len, n_kv_heads,
head_dim] for the whole decode, a step writes its keys at `length` with
`jax.lax.dynamic_update_slice` (a traced offset, so every single-token step reuses one
compilation), and the attention masks the unfilled slots through positions alone: slot t
holds position t, and a query at position q only reads keys at positions <= q < length + S.

`dynamic_update_slice` clamps an offset that would run past the buffer instead of failing,
so the host-side checks in `impl_jax.model.forward` refuse such a step before it is traced.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from spec.config import ModelConfig


class KVCache(NamedTuple):
    """A pytree.  Per layer, keys and values [B, max_seq_len, n_kv_heads, head_dim]; `length`
    (an int32 scalar array) counts the filled positions 0 .. length - 1."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    length: jax.Array

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, dtype=jnp.float32) -> KVCache:
        shape = (batch, config.max_seq_len, config.n_kv_heads, config.head_dim)
        buffers = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
        return cls(keys=buffers, values=buffers, length=jnp.zeros((), jnp.int32))

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def update(self, layer: int, k: jax.Array, v: jax.Array) -> KVCache:
        """Write this step's k, v [B, S, kv, hd] of `layer` at positions length .. length + S - 1.

        `length` itself moves on once per forward, after every layer wrote (`advance`)."""
        start = (0, self.length, 0, 0)
        new_k = jax.lax.dynamic_update_slice(self.keys[layer], k.astype(self.keys[layer].dtype), start)
        new_v = jax.lax.dynamic_update_slice(self.values[layer], v.astype(self.values[layer].dtype), start)
        return self._replace(keys=_replace_at(self.keys, layer, new_k),
                             values=_replace_at(self.values, layer, new_v))

    def advance(self, n: int) -> KVCache:
        """The cache after a forward of n new positions."""
        return self._replace(length=self.length + n)


def _replace_at(items: tuple, i: int, item: object) -> tuple:
    return items[:i] + (item,) + items[i + 1 :]
