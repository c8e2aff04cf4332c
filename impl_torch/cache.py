"""The KV cache, torch twin of impl_numpy/cache.py: static buffers for the global layers, a
ring buffer for the sliding ones.

Every slot records the position of the key it holds (EMPTY_SLOT, spec/plan.py, until a step
writes it), and attention reads positions, never slot numbers (impl_torch/masks.py), so both
layouts below go through the one mask rule.

Static buffers (every layer whose mask is not sliding).  Keys and values live in
[B, n_kv_heads, capacity, head_dim] allocated once (HF `StaticCache` style; the head-major
layout is the one SDPA and the ONNX `past_key_values.{i}.key` convention use); one buffer
`positions` [capacity] serves them all.  A step writes its S new keys at slots
[length, length + S) and attention reads the whole buffer: the slots not written yet are
hidden because they hold EMPTY_SLOT, not because of where they sit.  Static shapes mean no
reallocation per step and one graph for torch.compile and CUDA graphs, at the cost of
attending over `capacity` slots (choose a capacity that fits the run).

Ring buffers (layers whose plan mask is sliding, window W).  The query at position q sees
the keys q - W < k <= q (spec/MATH.md, "Masks"): its own and the W - 1 before it.  So a
sliding layer keeps only the last W - 1 keys, in [B, n_kv_heads, n, head_dim] with
n = min(W - 1, capacity) slots, and the position of each in `ring_positions` [n]:

    read   attention sees concat(ring, the step's S new keys)  [B, KV, n + S, hd], and the
           positions concat(ring_positions, the step's positions)  [1, n + S]
    keep   then the last min(n, S) new keys go to slot p mod n, p their position

Why concat and W - 1.  Every query of a step at positions p .. p + S - 1 needs keys from
p - W + 1 on: the new keys are all in the concat, and the ones before p are p - W + 1 .. p - 1,
at most W - 1, which the ring holds.  A prefill of S > W tokens thus attends to its own S keys
(writing them into a W-slot ring first would overwrite the earliest before the later queries
read them), and the memory a sliding layer keeps between steps is W - 1 keys, whatever the
sequence's length (the transient concat adds the step's S).  This is what HF's
`DynamicSlidingWindowLayer` keeps (`sliding_window - 1` states, returning the concat), and
what the ONNX export's presents hold for sliding layers (export/decoder.py).  A window of 1
keeps nothing (n = 0: each query sees itself only).

The cache also keeps the token ids it took in (`tokens` [B, capacity]): a LongRoPE step that
takes the sequence past the original context changes the factors of every cached position,
and the model then re-runs them from an empty cache (`reset`; impl_torch/model.py, spec/MATH.md
"LongRoPE").

The positions are shared by the batch (the rows of a batch are not padded here); a padded
batch goes through the export's concat cache (export/decoder.py), whose positions are per row.
"""

from __future__ import annotations

import torch

from lmref.spec.config import ModelConfig
from lmref.spec.errors import InputError
from lmref.spec.plan import EMPTY_SLOT, layer_plan


def ring_slots(config: ModelConfig, capacity: int) -> list[int | None]:
    """Per layer, the slots of its ring buffer, min(W - 1, capacity) for a sliding layer of
    window W (module docstring), or None for a layer with a static buffer of `capacity`."""
    return [min(plan.mask.window - 1, capacity) if plan.mask.kind == "sliding" else None
            for plan in layer_plan(config)]


class KVCache:
    """Per layer, keys and values [B, n_kv_heads, slots, head_dim]: slots = capacity for a
    static layer, ring_slots for a sliding one.  `positions` [capacity] (int64): the position
    each static slot holds; `ring_positions` [n]: each ring slot's; `length` positions taken."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], positions: torch.Tensor,
                 ring_positions: torch.Tensor, ring: frozenset[int], tokens: torch.Tensor):
        self.keys, self.values, self.positions, self.tokens = keys, values, positions, tokens
        self.ring_positions, self.ring = ring_positions, ring
        self.key_positions = positions[None]  # [1, capacity]: one view, handed to every static layer
        self.ring_read = ring_positions[None]  # [1, n + S]: the ring layers' key positions this step
        self.ring_writes: tuple[slice, torch.Tensor] | None = None  # this step's (kept entries, their slots)
        self.length = 0

    @classmethod
    def empty(cls, config: ModelConfig, batch: int, *, capacity: int | None = None,
              dtype: torch.dtype = torch.float32, device=None) -> KVCache:
        """Zeroed buffers for `batch` sequences of up to `capacity` (default: the context),
        every slot at EMPTY_SLOT; sliding layers get ring buffers (module docstring)."""
        capacity = config.max_seq_len if capacity is None else capacity
        if not 1 <= capacity <= config.max_seq_len:
            raise ValueError(f"capacity must be in [1, max_seq_len={config.max_seq_len}], got {capacity}")
        slots = ring_slots(config, capacity)
        shapes = [(batch, config.n_kv_heads, capacity if n is None else n, config.head_dim) for n in slots]
        keys = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
        values = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
        positions = torch.full((capacity,), EMPTY_SLOT, dtype=torch.int64, device=device)
        n_ring = next((n for n in slots if n is not None), 0)  # one window per config: one n
        ring_positions = torch.full((n_ring,), EMPTY_SLOT, dtype=torch.int64, device=device)
        tokens = torch.zeros((batch, capacity), dtype=torch.int64, device=device)
        return cls(keys, values, positions, ring_positions, frozenset(i for i, n in enumerate(slots) if n is not None),
                   tokens)

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.positions.shape[0]

    def check_room(self, batch: int, seq: int) -> None:
        """Raise `InputError` unless `batch` sequences of `seq` new tokens fit in the cache."""
        if batch != self.batch:
            raise InputError(f"tokens have batch {batch} but the KV cache was allocated for batch {self.batch}")
        if self.length + seq > self.capacity:
            raise InputError(f"sequence of {seq} tokens after {self.length} cached positions exceeds "
                             f"the KV cache capacity {self.capacity}")

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Take this step's k, v [B, kv, S, hd], computed at `positions` [1, S], into `layer`;
        return the keys and values its attention reads and their positions: the whole static
        buffers [B, kv, capacity, hd] and [1, capacity], or for a ring layer the concat
        [B, kv, n + S, hd] and [1, n + S] (module docstring).  Layer 0 starts the step: it
        records the positions for every layer.  `length` moves on only when the model has
        run every layer (`advance`)."""
        if positions.shape[0] != 1:
            raise ValueError(f"the static KV cache records one position per slot for the whole batch: "
                             f"positions must be [1, S], got {list(positions.shape)}")
        if layer == 0:
            self._record(positions[0])
        if layer in self.ring:
            return self._ring_append(layer, k, v)
        stop = self.length + k.shape[2]
        self.keys[layer][:, :, self.length : stop] = k
        self.values[layer][:, :, self.length : stop] = v
        return self.keys[layer], self.values[layer], self.key_positions

    def _record(self, positions: torch.Tensor) -> None:
        """The step's positions [S]: into the static slots [length, length + S); the ring
        layers' read positions (the ring's, then these); then which new entries the ring
        keeps, the last m = min(n, S), and their slots p mod n (distinct: m <= n consecutive
        positions), written into `ring_positions` now and into each ring layer's buffers
        by its append."""
        seq, n = positions.shape[0], self.ring_positions.shape[0]
        self.positions[self.length : self.length + seq] = positions
        self.ring_read = torch.cat([self.ring_positions, positions])[None]  # [1, n + S]
        kept = slice(seq - min(n, seq), seq)
        self.ring_writes = (kept, positions[kept] % n) if min(n, seq) else None  # slots [m]
        if self.ring_writes is not None:
            self.ring_positions[self.ring_writes[1]] = positions[kept]

    def _ring_append(self, layer: int, k: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """concat(ring, new) of `layer` and its positions; the ring then keeps the last new keys."""
        keys = torch.cat([self.keys[layer], k], dim=2)  # [B, KV, n + S, hd]
        values = torch.cat([self.values[layer], v], dim=2)
        if self.ring_writes is not None:
            kept, slots = self.ring_writes
            self.keys[layer].index_copy_(2, slots, k[:, :, kept])  # [B, KV, m, hd] into slots [m]
            self.values[layer].index_copy_(2, slots, v[:, :, kept])
        return keys, values, self.ring_read

    def advance(self, n: int) -> None:
        self.length += n

    def take(self, tokens: torch.Tensor) -> None:
        """After a forward of `tokens` [B, S]: record their ids and move `length` on by S."""
        self.tokens[:, self.length : self.length + tokens.shape[1]] = tokens
        self.advance(tokens.shape[1])

    def reset(self) -> None:
        """Empty: every slot at EMPTY_SLOT (the buffers' stale keys are then never visible)."""
        self.positions.fill_(EMPTY_SLOT)
        self.ring_positions.fill_(EMPTY_SLOT)
        self.length = 0


def rerun(model, tokens: torch.Tensor, cache: KVCache, capture: dict | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A step that takes a LongRoPE sequence past its original context (spec/plan.py
    `crosses_original_context`) changes the factors of every cached position, and each layer's
    keys and values depend on the layers below: `model` (a Transformer) runs the cached tokens
    and the step's again from the emptied cache (spec/MATH.md, "LongRoPE").  The step's logits
    [B, S, V] and router logits; `capture` gets the step's S positions."""
    everything = torch.cat([cache.tokens[:, : cache.length], tokens], dim=1)  # [B, past + S]
    cache.reset()
    captured = {} if capture is not None else None
    logits, routers = model(everything, cache=cache, capture=captured, output_router_logits=True)
    seq = tokens.shape[1]
    if capture is not None:
        capture |= {name: value[:, -seq:] for name, value in captured.items()}
    return logits[:, -seq:], [r[:, -seq:] for r in routers]
