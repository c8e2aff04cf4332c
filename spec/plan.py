"""The per-layer plan: what each layer computes, derived once from the config.

Every backend builds its layers from `layer_plan(config)` and none re-derives it from the
config's fields, so a rule such as "Gemma 3's sliding layers rotate with the local theta
and no scaling" is written here once:

    LayerPlan(index=3, mask=Mask("sliding", window=1024), rope=Rope(theta=1e4, scaling=None, ...),
              alibi=False, temperature=None, qk_norm="per_head", mlp="dense", norms="sandwich")

The mask rules themselves (which keys a query sees) are stated in spec/MATH.md, "Masks", and
implemented by each backend's masks module over token positions.  A KV cache records the
position held in each of its slots (EMPTY_SLOT for a slot that holds nothing), so the same
rules serve a prefill, a growing cache, a static buffer and a ring buffer alike.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Literal

from lmref.spec.config import MlpLayerKind, ModelConfig, NormPlacement, QkNorm, RopeLayout, RopeScaling

# The position recorded for a cache slot that holds no key (or a padding token): never visible.
EMPTY_SLOT = -1

MaskKind = Literal["causal", "sliding", "chunked"]


@dataclass(frozen=True)
class Mask:
    """Which keys a query at position q sees (spec/MATH.md, "Masks"); keys at EMPTY_SLOT never.

    causal   k <= q
    sliding  q - window < k <= q        (the query and the window - 1 keys before it)
    chunked  k <= q and k // chunk == q // chunk   (chunks start at position 0)
    """

    kind: MaskKind
    window: int | None = None
    chunk: int | None = None


@dataclass(frozen=True)
class Rope:
    """The rotary embedding of one layer: base, scaling, rotated dims per head and pair layout."""

    theta: float
    scaling: RopeScaling | None
    rotary_dim: int
    layout: RopeLayout


@dataclass(frozen=True)
class LayerPlan:
    index: int
    mask: Mask
    rope: Rope | None  # None: no rotary embedding on this layer
    alibi: bool  # ALiBi score biases
    temperature: tuple[int, float] | None  # (floor, scale) of Llama 4's NoPE query temperature
    qk_norm: QkNorm
    mlp: MlpLayerKind
    norms: NormPlacement


# Which sublayer each LayerPlan field shapes (the Block of spec/MATH.md: h + attention, then
# + feed-forward): export/stamping.py copies a layer's two sublayers from different layers when
# each agrees with its source on its fields.  A field in neither set is read as shaping both.
ATTENTION_FIELDS = frozenset({"mask", "rope", "alibi", "temperature", "qk_norm"})
FEED_FORWARD_FIELDS = frozenset({"mlp"})


def sublayer_plans(plan: LayerPlan) -> tuple[tuple, tuple]:
    """(the fields the attention sublayer computes by, those the feed-forward sublayer computes
    by): every field but the index, each in the sublayer its set above names, any other in both."""
    fields = [(f.name, getattr(plan, f.name)) for f in dataclasses.fields(plan) if f.name != "index"]
    return (tuple(kv for kv in fields if kv[0] not in FEED_FORWARD_FIELDS),
            tuple(kv for kv in fields if kv[0] not in ATTENTION_FIELDS))


def _mask(config: ModelConfig, kind: str) -> Mask:
    if kind == "sliding":
        return Mask("sliding", window=config.sliding_window)
    if kind == "chunked":
        return Mask("chunked", chunk=config.attn_chunk_size)
    return Mask("causal")  # global and global_nope


def _rope(config: ModelConfig, kind: str) -> Rope | None:
    if config.position != "rope" or kind == "global_nope":
        return None
    if kind == "sliding" and config.rope_theta_local is not None:
        # Gemma 3: the local (sliding) layers rotate with their own base and no scaling;
        # the scaling belongs to the global layers (HF gemma3 `rotary_emb_local`).
        return Rope(config.rope_theta_local, None, config.rope_dim, config.rope_layout)
    return Rope(config.rope_theta, config.rope_scaling, config.rope_dim, config.rope_layout)


def _layer(config: ModelConfig, index: int, kind: str, mlp: MlpLayerKind) -> LayerPlan:
    rope = _rope(config, kind)
    temperature = None
    if kind == "global_nope" and config.attn_temperature_floor is not None:
        temperature = (config.attn_temperature_floor, config.attn_temperature_scale or 0.0)
    # Llama 4's weightless L2 QK norm sits on the RoPE layers only (HF llama4 `use_qk_norm`).
    qk_norm = "none" if config.qk_norm == "l2" and rope is None else config.qk_norm
    return LayerPlan(index=index, mask=_mask(config, kind), rope=rope, alibi=config.position == "alibi",
                     temperature=temperature, qk_norm=qk_norm, mlp=mlp, norms=config.norm_placement)


@functools.lru_cache(maxsize=256)
def layer_plan(config: ModelConfig) -> tuple[LayerPlan, ...]:
    """One LayerPlan per layer, in order."""
    return tuple(_layer(config, i, kind, mlp)
                 for i, (kind, mlp) in enumerate(zip(config.layer_attn_kinds, config.layer_mlp_kinds)))


def distinct_masks(config: ModelConfig) -> tuple[Mask, ...]:
    """The masks the layers use, each once, in layer order (build each once per forward)."""
    return tuple(dict.fromkeys(layer.mask for layer in layer_plan(config)))


def distinct_ropes(config: ModelConfig) -> tuple[Rope, ...]:
    """The rotary embeddings the layers use, each once, in layer order."""
    return tuple(dict.fromkeys(layer.rope for layer in layer_plan(config) if layer.rope is not None))


def original_context(config: ModelConfig) -> int | None:
    """LongRoPE's original context O (spec/MATH.md, "LongRoPE"): a sequence longer than O rotates
    every position with the long factors; None without LongRoPE."""
    s = config.rope_scaling
    return s.original_max_seq_len if config.position == "rope" and s is not None and s.kind == "longrope" else None


def crosses_original_context(config: ModelConfig, past: int, total: int) -> bool:
    """Whether a step taking a cached sequence from `past` positions to `total` changes LongRoPE's
    factors under its cache: 0 < past <= O < total.  Every cached key and value was computed
    with the short factors, and each layer's depend on the layers below, so no rotation of the
    cached keys mends them: the backends re-run the whole sequence (decode equals prefill)."""
    o = original_context(config)
    return o is not None and 0 < past <= o < total
