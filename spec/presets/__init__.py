"""Named presets (real sizes, as published) and `tiny()` to shrink one keeping every flag.

Real-size presets are checked for parameter count and shapes only, never run.  The golden
store and the tests run `tiny(preset)`: the same flags, small numbers.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from spec.config import ModelConfig
from spec.presets import gpt2, llama, mpt, olmo

PRESETS: dict[str, ModelConfig] = gpt2.PRESETS | llama.PRESETS | olmo.PRESETS | mpt.PRESETS

# Family names select several presets at once.  A name that is also a preset id would be
# ambiguous, so such families are reached by pattern instead (`olmo*`).
FAMILIES: dict[str, tuple[str, ...]] = {
    "llama": tuple(llama.PRESETS),
}
assert not set(FAMILIES) & set(PRESETS), "a family name shadows a preset id"

TINY_HEAD_DIM = 16
TINY_LAYERS = 2
TINY_VOCAB = 251  # odd on purpose: no power-of-two size hides a shape bug
TINY_MAX_SEQ_LEN = 1024


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
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


def tiny(config: ModelConfig | str, **overrides) -> ModelConfig:
    """A small model with every flag of `config`: 2 layers, head_dim 16, vocab 251.

    Sizes keep their ratios (d_ff / d_model; d_model == n_heads * head_dim where the preset
    has it), the context is capped at 1024 and a RoPE scaling's original context shrinks by
    the same factor, so the scaling still bends the frequencies it bends at full size.
    """
    base = get_preset(config) if isinstance(config, str) else config
    n_heads, n_kv_heads = _tiny_heads(base)
    d_model = n_heads * TINY_HEAD_DIM if base.d_model == base.q_dim else 64
    max_seq_len = min(base.max_seq_len, TINY_MAX_SEQ_LEN)
    changes = dict(
        name=f"{base.name}-tiny", vocab_size=TINY_VOCAB, n_layers=TINY_LAYERS,
        n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=TINY_HEAD_DIM, d_model=d_model,
        d_ff=round(d_model * base.d_ff / base.d_model), max_seq_len=max_seq_len,
    )
    scaling = base.rope_scaling
    if scaling is not None and scaling.original_max_seq_len is not None:
        shrink = max_seq_len / base.max_seq_len
        changes["rope_scaling"] = dataclasses.replace(
            scaling, original_max_seq_len=max(1, round(scaling.original_max_seq_len * shrink))
        )
    return dataclasses.replace(base, **(changes | overrides))
