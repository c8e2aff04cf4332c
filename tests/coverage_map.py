"""The coverage map: for every knob of ModelConfig (and of its `moe` and `vision` sub-configs) and every value
of a categorical knob, the presets that set it and the golden cases where it is active.

Why: a knob no golden case reaches is checked by the property tests alone, and conformance
would pass a port that gets it wrong (issue 17: interleaved RoPE, partial rotary and a tied
head with a bias were caught only by the property tests while no case used them).  The map is
computed, never written by hand:

  - a preset "sets" a knob when its full-size config (spec/presets) has it active;
  - a case has it active when the config stored in its case.json has it (not the preset's
    name: `tiny()` and conformance/cases.py may change a config, and this map sees it);
  - "active" is the knob away from its default, or the categorical field at that value, and
    only where the knob means something (`RELEVANT`: RoPE knobs on RoPE models, ALiBi slopes
    on ALiBi models, the moe knobs where a layer is "moe", ...).

The map says where a knob is present; tests/test_knobs_alive.py that, where a preset's cases
have it, switching it off moves a golden output beyond the float32 row.

Knobs come from the dataclass fields and their `Literal` types (spec/config.py), so a new
field or a new choice joins the map by itself.  Sizes and labels (spec/features.py
SIZE_FIELDS, LABEL_FIELDS) and the moe sizes are not knobs; `DERIVED` adds the shapes the
sizes make that ports get wrong (MHA / GQA / MQA, ALiBi's head counts that are not a power of
two), and `COMBINATIONS` the pairs of knobs a port can get wrong together.

Knobs no preset sets are listed apart, with whether tests/strategies.py draws them: their math
is checked by the property tests only, or only by their own unit tests, if any.

Regenerate docs/coverage.md (tests/test_coverage_map.py fails while it is out of date):

    .venv/bin/python -m tests.coverage_map > docs/coverage.md
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass

from lmref.conformance.store import GoldenStore
from lmref.spec.config import ModelConfig, MoEConfig, RopeScaling, VisionConfig
from lmref.spec.features import LABEL_FIELDS, SIZE_FIELDS
from lmref.spec.presets import PRESETS

Active = Callable[[ModelConfig], bool]
MOE_SIZE_FIELDS = ("n_experts", "n_experts_per_token")
# The tower's sizes and its placeholder id (which `tiny()` moves into the tiny vocabulary).
VISION_SIZE_FIELDS = ("image_size", "patch_size", "n_channels", "d_model", "n_layers", "n_heads", "d_ff",
                      "image_token_id")
PATTERNS = {"attn_pattern": "layer_attn_kinds", "mlp_pattern": "layer_mlp_kinds"}  # field -> expanded per layer
REGENERATE = ".venv/bin/python -m tests.coverage_map > docs/coverage.md"


@dataclass(frozen=True)
class Knob:
    name: str  # "rope_layout=interleaved", "attn_pattern[sliding]", "moe.renormalize=False", "qkv_clip"
    active: Active


def _has_moe(c: ModelConfig) -> bool:
    return c.moe is not None and "moe" in c.layer_mlp_kinds


def _has_vision(c: ModelConfig) -> bool:
    return c.vision is not None


def _rope(c: ModelConfig) -> bool:
    return c.position == "rope"


# Where a knob means something (the field's value elsewhere is never read; spec/validation.py
# refuses most of them set there): field -> condition.  "moe." fields are gated by _has_moe too.
RELEVANT: dict[str, Active] = {
    **dict.fromkeys(("rope_theta", "rope_theta_local", "rope_layout", "rope_fraction", "rope_scaling"), _rope),
    **dict.fromkeys(("alibi_max_bias", "alibi_slopes"), lambda c: c.position == "alibi"),
    "sliding_window": lambda c: "sliding" in c.layer_attn_kinds,
    "attn_chunk_size": lambda c: "chunked" in c.layer_attn_kinds,
    **dict.fromkeys(("attn_temperature_floor", "attn_temperature_scale"), lambda c: "global_nope" in c.layer_attn_kinds),
    "shared_attn_norm": lambda c: c.parallel_residual,
    "moe.aux_loss": lambda c: c.moe.aux_loss_coef > 0,
    **dict.fromkeys(("moe.shared_d_ff", "moe.shared_expert_gate"), lambda c: c.moe.n_shared_experts > 0),
}
# Knobs whose "active" is not "away from the default": partial rotary is rope_dim < head_dim
# (spec/features.py "rope.partial"; a fraction that rounds to the whole head rotates it all).
SPECIAL: dict[str, Active] = {"rope_fraction": lambda c: c.rope_dim < c.head_dim}


def _field_knobs(cls: type, prefix: str, value: Callable[[ModelConfig], object], skip: tuple[str, ...]) -> list[Knob]:
    """One knob per non-default setting of each field of `cls` (`value(config)` is the instance)."""
    hints = typing.get_type_hints(cls)
    knobs = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        key = f"{prefix}{f.name}"
        get = (lambda c, n=f.name: getattr(value(c), n))
        for name, test in _settings(key, f, hints[f.name], get):
            knobs.append(Knob(name, _gated(key, test)))
    return knobs


def _settings(key: str, f: dataclasses.Field, hint: object, get: Callable) -> list[tuple[str, Active]]:
    """(knob name, test) for each setting of field `f` a config can be active in."""
    default = f.default
    literal = _literal_of(hint)
    if typing.get_origin(hint) is tuple and literal:  # a layer pattern: each kind that some layer has
        expanded = PATTERNS[f.name]
        return [(f"{key}[{v}]", lambda c, v=v: v in getattr(c, expanded)) for v in literal]
    if literal:  # a categorical field: each of its values
        return [(f"{key}={v}", lambda c, v=v: get(c) == v) for v in literal]
    if RopeScaling in _members(hint):  # each scaling kind
        kinds = typing.get_args(typing.get_type_hints(RopeScaling)["kind"])
        return [(f"{key}.kind={k}", lambda c, k=k: get(c) is not None and get(c).kind == k) for k in kinds]
    if MoEConfig in _members(hint):  # the sub-config's own knobs are listed after it
        return [(key, _has_moe)]
    if VisionConfig in _members(hint):
        return [(key, _has_vision)]
    if key in SPECIAL:
        return [(key, SPECIAL[key])]
    if hint is bool:
        return [(f"{key}={not default}", lambda c: get(c) != default)]
    if default is dataclasses.MISSING:  # a number every config sets (norm_eps)
        return [(key, lambda c: True)]
    return [(key, lambda c: get(c) != default)]  # a number or an optional value away from its default


def _literal_of(hint: object) -> tuple:
    """The choices of a Literal, or of the Literal inside tuple[Literal, ...]; () otherwise."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return _literal_of(typing.get_args(hint)[0])
    return ()


def _members(hint: object) -> tuple:
    return typing.get_args(hint) or (hint,)


def _gated(key: str, test: Active) -> Active:
    """`test` where the knob means something (`RELEVANT`; a moe knob where a layer is "moe")."""
    sub = {"moe.": [_has_moe], "vision.": [_has_vision]}.get(key[: key.find(".") + 1], [])
    conditions = sub + ([RELEVANT[key]] if key in RELEVANT else [])
    return lambda c: all(condition(c) for condition in conditions) and test(c)


def _power_of_two(n: int) -> bool:
    return n & (n - 1) == 0


# Shapes the sizes make that a port gets wrong (spec/MATH.md: GQA's head h reads kv head
# h // group; ALiBi's slopes have a branch for head counts that are not a power of two).
DERIVED = [
    Knob("heads: MHA (n_kv_heads = n_heads)", lambda c: c.n_kv_heads == c.n_heads),
    Knob("heads: GQA (1 < n_kv_heads < n_heads)", lambda c: 1 < c.n_kv_heads < c.n_heads),
    Knob("heads: MQA (n_kv_heads = 1 < n_heads)", lambda c: c.n_kv_heads == 1 < c.n_heads),
    Knob("position=alibi, n_heads not a power of two", lambda c: c.position == "alibi" and not _power_of_two(c.n_heads)),
]
# Pairs of knobs that interact: a tied head with its own bias (the tied weight and a separate
# bias parameter; issue 17), interleaved pairs inside a partial rotary (GPT-J's rotary_dim).
COMBINATIONS = [
    Knob("tie_embeddings=True + lm_head_bias=True", lambda c: c.tie_embeddings and c.lm_head_bias),
    Knob("rope_layout=interleaved + partial rotary",
         lambda c: _rope(c) and c.rope_layout == "interleaved" and c.rope_dim < c.head_dim),
]


def all_knobs() -> list[Knob]:
    """Every knob: the config's fields, the moe and vision sub-configs', then DERIVED and COMBINATIONS."""
    fields = _field_knobs(ModelConfig, "", lambda c: c, SIZE_FIELDS + LABEL_FIELDS)
    moe = _field_knobs(MoEConfig, "moe.", lambda c: c.moe, MOE_SIZE_FIELDS)
    vision = _field_knobs(VisionConfig, "vision.", lambda c: c.vision, VISION_SIZE_FIELDS)
    knobs = fields + moe + vision + DERIVED + COMBINATIONS
    assert len({k.name for k in knobs}) == len(knobs), "a knob name is defined twice"
    return knobs


@dataclass
class Row:
    knob: str
    presets: list[str]  # the presets whose full-size config has the knob active
    cases: list[str]  # "<arch>/<case>" of the golden cases whose stored config has it active


def build(presets: dict[str, ModelConfig], cases: dict[str, ModelConfig], knobs: list[Knob] | None = None) -> list[Row]:
    """One row per knob: `presets` {name: config}, `cases` {"<arch>/<case>": stored config}."""
    return [Row(k.name, [p for p, c in presets.items() if k.active(c)], [i for i, c in cases.items() if k.active(c)])
            for k in knobs or all_knobs()]


def stored_case_configs(store: GoldenStore | None = None) -> dict[str, ModelConfig]:
    """{"<arch>/<case>": the config in its case.json} for every case of the store."""
    store = store or GoldenStore()
    return {f"{arch}/{name}": ModelConfig.from_dict(store.load_meta(arch, name)["config"])
            for arch in store.archs() for name in store.case_names(arch)}


def uncovered(rows: list[Row]) -> list[str]:
    """The knobs some preset sets that no golden case has active (what must stay empty)."""
    return [r.knob for r in rows if r.presets and not r.cases]


def uncovered_per_preset(rows: list[Row]) -> list[str]:
    """'<preset>: <knob>' where a preset sets a knob that none of its own cases has active."""
    return [f"{p}: {r.knob}" for r in rows for p in r.presets if not any(c.startswith(f"{p}/") for c in r.cases)]


def current_document() -> str:
    """docs/coverage.md as the presets and the golden store make it now."""
    from tests.coverage_doc import render

    cases = stored_case_configs()
    return render(build(PRESETS, cases), list(cases))


if __name__ == "__main__":
    print(current_document(), end="")
