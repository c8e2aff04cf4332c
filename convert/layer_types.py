"""Per-layer attention kinds as transformers' `layer_types` lists, both ways (qwen2, qwen3,
gemma2, gemma3_text).

Those configs name each layer's attention "full_attention" (lmref's "global") or
"sliding_attention" ("sliding", keys q - W < k <= q with the config's `sliding_window`;
measured: spec/MATH.md, "Masks"), and each class derives the list from its own rule when the
file has none (`__post_init__` of Qwen2Config, Gemma2Config, Gemma3TextConfig, 5.23; the same
in 4.57).  lmref keeps a pattern repeated over the depth (`attn_pattern`); a list read back
becomes its shortest period, so Gemma 2's 42 alternating layers are ("sliding", "global") and
Gemma 3's 34 are five "sliding" and one "global".
"""

from __future__ import annotations

from lmref.convert.fields import HFConfig
from lmref.spec.config import AttnKind, ModelConfig

HF_KIND = {"global": "full_attention", "sliding": "sliding_attention"}
LMREF_KIND = {hf: kind for kind, hf in HF_KIND.items()}


def layer_types(c: ModelConfig) -> list[str]:
    """The `layer_types` list of `c`, one entry per layer."""
    return [HF_KIND[kind] for kind in c.layer_attn_kinds]


def layer_types_rule(c: ModelConfig) -> tuple[str, bool, str]:
    return ("attn_pattern", set(c.attn_pattern) <= set(HF_KIND),
            f"transformers' layer_types name {' and '.join(HF_KIND.values())} layers only, "
            f"got attn_pattern={c.attn_pattern}")


def shortest_period(kinds: tuple[AttnKind, ...]) -> tuple[AttnKind, ...]:
    """The shortest prefix whose repetition (spec/config.py `expand_pattern`) gives `kinds`."""
    return next(kinds[:p] for p in range(1, len(kinds) + 1)
                if all(kind == kinds[i % p] for i, kind in enumerate(kinds)))


def attention_fields(cfg: HFConfig, types: object, window: int | None, n_layers: int) -> dict:
    """`attn_pattern` and `sliding_window` of a `layer_types` list and the window its sliding
    layers use (None when the config has none: then no layer may slide)."""
    if not (isinstance(types, list) and len(types) == n_layers and all(t in LMREF_KIND for t in types)):
        cfg.fail("layer_types", types, f"expected a list of num_hidden_layers ({n_layers}) entries, each "
                 f"{' or '.join(LMREF_KIND)}")
    pattern = shortest_period(tuple(LMREF_KIND[t] for t in types))
    if "sliding" not in pattern:
        return dict(attn_pattern=pattern, sliding_window=None)  # the window is never used
    if window is None:
        cfg.fail("layer_types", types, "names sliding_attention layers but the config sets no window "
                 "(sliding_window null, or use_sliding_window false), so transformers has none to give them")
    return dict(attn_pattern=pattern, sliding_window=window)
