"""The KV cache: fixed-size key and value buffers per layer, the position each slot holds
(spec/plan.py: the masks read positions, never slot numbers), and a length index.

Jit-friendly by construction: the buffers have the static shape [B, max_seq_len, n_kv_heads,
head_dim] for the whole decode, and a step writes its keys, values and positions at slot
`length` with `jax.lax.dynamic_update_slice` (a traced offset, so every single-token step
reuses one compilation).  A slot not written yet records EMPTY_SLOT, which no mask shows
(spec/MATH.md, "Masks"), so the attention reads the whole buffer without knowing `length`.

Each layer records its own positions, as the golden's cache does (impl_numpy/cache.py):
today every layer writes the same slots, but a layer with another buffer layout (a ring
buffer for a sliding window) needs no other code in the attention.

The cache keeps the token ids it took in (`tokens`): a LongRoPE step that takes the sequence
past the original context changes the factors of every cached position, and `forward` then
re-runs them from an empty cache (impl_jax/model.py, spec/MATH.md "LongRoPE").

`dynamic_update_slice` clamps an offset that would run past the buffer instead of failing,
so the host-side checks in `impl_jax.model.forward` refuse such a step before it is traced.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from lmref.spec.config import ModelConfig
from lmref.spec.plan import EMPTY_SLOT


class KVCache(NamedTuple):
    """A pytree.  Per layer, keys and values [B, max_seq_len, n_kv_heads, head_dim] and the
    positions [max_seq_len] (int32, EMPTY_SLOT where nothing is written) they were computed
    at; `length` (an int32 scalar array) counts the positions taken in (the next one's slot)."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    positions: tuple[jax.Array, ...]
    length: jax.Array
    tokens: jax.Array  # [B, max_seq_len] int32: the ids taken in, zeros after `length`

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, dtype=jnp.float32) -> KVCache:
        shape = (batch, config.max_seq_len, config.n_kv_heads, config.head_dim)
        buffers = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layers))
        slots = tuple(jnp.full(config.max_seq_len, EMPTY_SLOT, jnp.int32) for _ in range(config.n_layers))
        return cls(keys=buffers, values=buffers, positions=slots, length=jnp.zeros((), jnp.int32),
                   tokens=jnp.zeros((batch, config.max_seq_len), jnp.int32))

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

    def update(self, layer: int, k: jax.Array, v: jax.Array, positions: jax.Array) -> KVCache:
        """Write this step's k, v [B, S, kv, hd] of `layer`, computed at `positions` [S], into
        slots length .. length + S - 1.

        `length` itself moves on once per forward, after every layer wrote (`advance`)."""
        zero = jnp.zeros((), self.length.dtype)  # the offsets share one integer type (int64 under x64)
        start = (zero, self.length, zero, zero)
        new_k = jax.lax.dynamic_update_slice(self.keys[layer], k.astype(self.keys[layer].dtype), start)
        new_v = jax.lax.dynamic_update_slice(self.values[layer], v.astype(self.values[layer].dtype), start)
        new_positions = jax.lax.dynamic_update_slice(self.positions[layer], positions.astype(jnp.int32),
                                                     (self.length,))
        return self._replace(keys=_replace_at(self.keys, layer, new_k),
                             values=_replace_at(self.values, layer, new_v),
                             positions=_replace_at(self.positions, layer, new_positions))

    def take(self, tokens: jax.Array) -> KVCache:
        """The cache after a forward of `tokens` [B, S]: their ids recorded, `length` moved on by S."""
        zero = jnp.zeros((), self.length.dtype)
        written = jax.lax.dynamic_update_slice(self.tokens, tokens.astype(jnp.int32), (zero, self.length))
        return self._replace(tokens=written, length=self.length + tokens.shape[1])


def _replace_at(items: tuple, i: int, item: object) -> tuple:
    return items[:i] + (item,) + items[i + 1 :]
