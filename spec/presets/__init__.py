"""Named presets (real sizes, as published) and `tiny()` to shrink one keeping every flag.

Each family module (gpt2.py, llama.py, ...) registers its presets with their sources; every
module of this package but preset.py is a family module, found by name (adding a family is
adding its module).  The family name selects all of its presets (`--arch llama`) unless it is
a preset id itself.  Real-size
presets are checked for parameter count and shapes only, never run.  The golden store and
the tests run `tiny(preset)`: the same flags, small numbers, every knob still effective.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import math
import pkgutil

from lmref.spec.config import ModelConfig, VisionConfig
from lmref.spec.presets.preset import Preset


def _registry() -> dict[str, Preset]:
    """Every family module's presets, families in name order."""
    registry: dict[str, Preset] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.name == "preset":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        assert not set(module.PRESETS) & set(registry), f"{module.__name__} redefines a preset id"
        registry |= module.PRESETS
    return registry


REGISTRY: dict[str, Preset] = _registry()

PRESETS: dict[str, ModelConfig] = {name: preset.config for name, preset in REGISTRY.items()}

# Family names select several presets at once.  A family named like one of its presets
# (gpt2, olmo, mpt) would be ambiguous, so it is reached by pattern instead (`olmo*`).
FAMILIES: dict[str, tuple[str, ...]] = {
    family: names
    for family in dict.fromkeys(p.family for p in REGISTRY.values())
    if family not in PRESETS and (names := tuple(n for n, p in REGISTRY.items() if p.family == family))
}

TINY_HEAD_DIM = 16
TINY_LAYERS = 2
TINY_VOCAB = 251  # odd on purpose: no power-of-two size hides a shape bug
TINY_MAX_SEQ_LEN = 1024
# Windows and chunks shorter than the golden cases' sequences (7, 11, 13 and 160 tokens), so
# that a sliding or chunked layer's mask cuts keys off in every case.
TINY_WINDOW = 5
TINY_CHUNK = 4
# q, k and v have a standard deviation near 1 at the tiny size (spec/params.py's init), so a
# clip of 8 (DBRX) would never act; 1.5 clips about one value in eight.
TINY_QKV_CLIP = 1.5
# Llama 4's NoPE temperature is 1 until position floor - 1 (8192 at full size): a floor of 4
# scales the queries from position 3 on, by 1.37 at position 159.
TINY_TEMPERATURE_FLOOR = 4
# A vision tower of 12-pixel images in 4-pixel patches: a 3 x 3 grid (odd, so that a row-major
# against column-major patch order shows), 2 heads of 16, and 3 layers, so that LLaVA's feature
# layer -2 leaves a layer after it that no output may depend on.
TINY_IMAGE_SIZE, TINY_PATCH_SIZE = 12, 4
TINY_VISION_HEADS, TINY_VISION_LAYERS = 2, 3


def get_preset(name: str) -> ModelConfig:
    return preset_info(name).config


def preset_info(name: str) -> Preset:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def resolve_archs(spec: str) -> list[str]:
    """'llama,olmo*' -> preset ids, in order, without repeats.

    Each comma-separated item is a preset id (exact match wins), a family name (`llama`), or
    a shell-style pattern over preset ids (`olmo*`: olmo and olmo-alibi).
    """
    names: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in PRESETS:
            found: tuple[str, ...] = (item,)
        elif item in FAMILIES:
            found = FAMILIES[item]
        elif matches := tuple(n for n in PRESETS if fnmatch.fnmatchcase(n, item)):
            found = matches
        else:
            raise KeyError(
                f"unknown arch {item!r}; presets: {', '.join(sorted(PRESETS))}; "
                f"families: {', '.join(sorted(FAMILIES))}"
            )
        names += [n for n in found if n not in names]
    if not names:
        raise KeyError("no arch given")
    return names


def _tiny_heads(config: ModelConfig) -> tuple[int, int]:
    """(n_heads, n_kv_heads) keeping the attention kind: MHA, MQA or GQA (group size <= 4)."""
    if config.n_kv_heads == config.n_heads:
        return 4, 4
    if config.n_kv_heads == 1:
        return 4, 1
    return 2 * min(config.kv_group_size, 4), 2


def _shrunk_knobs(base: ModelConfig, max_seq_len: int, d_model: int) -> dict:
    """The knobs whose values are sizes, shrunk so that each still acts at the tiny size."""
    changes: dict = {}
    scaling = base.rope_scaling
    if scaling is not None and scaling.original_max_seq_len is not None:
        # the original context shrinks with the context: the scaling still bends the
        # frequencies it bends at full size
        shrink = max_seq_len / base.max_seq_len
        changes["rope_scaling"] = dataclasses.replace(
            scaling, original_max_seq_len=max(1, round(scaling.original_max_seq_len * shrink)))
    if scaling is not None and scaling.short_factor is not None:  # LongRoPE: one factor per rotated pair
        pairs = int(TINY_HEAD_DIM * base.rope_fraction) // 2
        changes["rope_scaling"] = dataclasses.replace(
            changes.get("rope_scaling", scaling), short_factor=_spread(scaling.short_factor, pairs),
            long_factor=_spread(scaling.long_factor, pairs))
    if base.sliding_window is not None:
        changes["sliding_window"] = min(base.sliding_window, TINY_WINDOW)
    if base.attn_chunk_size is not None:
        changes["attn_chunk_size"] = min(base.attn_chunk_size, TINY_CHUNK)
    if base.attn_temperature_floor is not None:
        changes["attn_temperature_floor"] = min(base.attn_temperature_floor, TINY_TEMPERATURE_FLOOR)
    if base.qkv_clip is not None:
        changes["qkv_clip"] = min(base.qkv_clip, TINY_QKV_CLIP)
    if base.query_scale_dim is not None:  # the ratio to head_dim is what the scale changes
        changes["query_scale_dim"] = max(1, round(base.query_scale_dim * TINY_HEAD_DIM / base.head_dim))
    if base.logit_scale != 1.0:
        # a unit-RMS state against a unit-RMS table gives logits of size sqrt(d_model): the scale
        # keeps its product with sqrt(d_model), so tiny PaLM scales by its own d_model^-0.5
        changes["logit_scale"] = base.logit_scale * math.sqrt(base.d_model) / math.sqrt(d_model)
    return changes


def _tiny_vision(vision: VisionConfig, vocab_size: int) -> VisionConfig:
    """The tower at the tiny size, every flag kept: the d_ff / d_model ratio, the feature layer
    counted from the end (or scaled with the depth), the placeholder inside the tiny vocabulary."""
    d_model = TINY_VISION_HEADS * TINY_HEAD_DIM
    n_layers = min(vision.n_layers, TINY_VISION_LAYERS)
    layer = vision.feature_layer
    feature_layer = layer if layer < 0 else round(layer * n_layers / vision.n_layers)
    return dataclasses.replace(
        vision, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, d_model=d_model, n_heads=TINY_VISION_HEADS,
        n_layers=n_layers, d_ff=round(d_model * vision.d_ff / vision.d_model), feature_layer=feature_layer,
        image_token_id=min(vision.image_token_id, vocab_size - 1))


def _spread(values: tuple[float, ...], n: int) -> tuple[float, ...]:
    """n of `values`, evenly spaced from the first to the last (LongRoPE's factors for the tiny
    head's n rotated pairs: the lowest and the highest frequency keep theirs)."""
    if n == 1:
        return values[:1]
    return tuple(values[round(i * (len(values) - 1) / (n - 1))] for i in range(n))


def tiny(config: ModelConfig | str, **overrides) -> ModelConfig:
    """A small model with every flag of `config`: 2 layers (or one period of its layer
    patterns), head_dim 16, vocab 251, a vision tower of 3 x 3 patches (`_tiny_vision`).

    Sizes keep their ratios (d_ff / d_model; d_model / (n_heads * head_dim); an expert's
    width to d_model; logit_scale x sqrt(d_model)), the context is capped at 1024, and the knobs
    that are sizes shrink so that each still acts on the golden cases (`_shrunk_knobs`).
    """
    base = get_preset(config) if isinstance(config, str) else config
    n_heads, n_kv_heads = _tiny_heads(base)
    # d_model / (n_heads * head_dim) keeps its ratio, so a model whose head_dim is set apart
    # from d_model / n_heads (Gemma 7B: 3072 against 16 x 256) keeps them apart
    d_model = round(n_heads * TINY_HEAD_DIM * base.d_model / base.q_dim)
    max_seq_len = min(base.max_seq_len, TINY_MAX_SEQ_LEN)
    # enough layers for one period of each layer pattern (Gemma 3's five sliding, one global)
    n_layers = min(base.n_layers, max(TINY_LAYERS, len(base.attn_pattern), len(base.mlp_pattern)))
    changes = dict(
        name=f"{base.name}-tiny", vocab_size=TINY_VOCAB, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=TINY_HEAD_DIM, d_model=d_model,
        d_ff=round(d_model * base.d_ff / base.d_model), max_seq_len=max_seq_len,
    )
    if base.moe is not None:  # the experts' widths keep their ratio to d_model too
        widths = {k: round(d_model * getattr(base.moe, k) / base.d_model)
                  for k in ("d_ff", "shared_d_ff") if getattr(base.moe, k) is not None}
        changes["moe"] = dataclasses.replace(base.moe, **widths)
    if base.vision is not None:
        changes["vision"] = _tiny_vision(base.vision, TINY_VOCAB)
    return dataclasses.replace(base, **(changes | _shrunk_knobs(base, max_seq_len, d_model) | overrides))
