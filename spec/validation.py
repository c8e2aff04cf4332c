"""What a `ModelConfig` may mean: every rule `__post_init__` checks, each failing with a
`ConfigError` that names the field and the rule (e.g. `n_heads (12) must be divisible by
n_kv_heads (5)`).

Validation says whether a config is meaningful, never whether some backend computes it:
that is each backend's declared feature set (spec/features.py).

Two passes.  First every field on its own (`MODEL_RULES`, `ROPE_SCALING_RULES`, `MOE_RULES`:
one rule per field of each class, tests/test_config.py checks that none is missing): its type
(a bool field takes only True or False, an int field only an int, not a bool or a float,
a choice field only one of its strings, a pattern only a tuple of them) and its range (every
float knob a finite real number, int or float, in its range; sizes at most 2**63 - 1, the
int64 every backend's shapes use).  Then the rules between fields.  Neither pass does work
per layer: a layer pattern is checked as the pattern, never expanded over `n_layers`, so a
config of 10**13 layers validates as fast as one of 2 (issue 10, item 12).  Messages show
values through a bounded repr, so that neither a huge int (which `str()` refuses past 4300
digits) nor a deeply nested list turns a ConfigError into another exception.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Callable
from typing import get_args

from lmref.spec.config import (
    Activation, AlibiSlopes, AttnKind, AuxLossKind, ConfigError, EmbeddingScale, MlpKind, MlpLayerKind, ModelConfig, MoEConfig,
    Norm, NormPlacement, Position, QkNorm, RopeLayout, RopeScaling, RopeScalingKind, RouterKind,
)

MAX_SIZE = 2**63 - 1  # sizes, counts and positions are int64 in every backend


def _fail(field_name: str, rule: str) -> None:
    raise ConfigError(f"{field_name}: {rule}")


class _BoundedRepr(reprlib.Repr):
    """repr() cut short: long strings and containers elided, ints past 60 digits by size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 80
        self.maxlong = 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 192:  # about 58 digits; str() itself refuses past 4300
            return f"{'-' if x < 0 else ''}<an integer of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_show = _BoundedRepr().repr


# --- one rule per field ------------------------------------------------------------------

Rule = Callable[[str, object], None]  # (field name, value): raise ConfigError or return


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(name: str, value: object) -> None:
    if not _is_int(value) or value < 1:
        _fail(name, f"must be a positive integer, got {_show(value)}")
    if value > MAX_SIZE:
        _fail(name, f"must be at most 2**63 - 1, got {_show(value)}")


def _non_negative_int(name: str, value: object) -> None:
    if not _is_int(value) or value < 0:
        _fail(name, f"must be a non-negative integer, got {_show(value)}")
    if value > MAX_SIZE:
        _fail(name, f"must be at most 2**63 - 1, got {_show(value)}")


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):  # "false" from a JSON file would otherwise read as true
        _fail(name, f"must be True or False, got {_show(value)}")


def _string(name: str, value: object) -> None:
    if not isinstance(value, str):
        _fail(name, f"must be a string, got {_show(value)}")


def _optional_string(name: str, value: object) -> None:
    if value is not None and not isinstance(value, str):
        _fail(name, f"must be a string or None, got {_show(value)}")


def _is_real(value: object) -> bool:
    """A finite int or float (NumPy's float64 is a float); not a bool, not an int no float holds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond the largest float
        return False


def _real(rule: str, holds: Callable[[float], bool]) -> Rule:
    """A finite real number for which `holds`; `rule` words it ("must be > 0")."""
    def check(name: str, value: object) -> None:
        if not _is_real(value):
            _fail(name, f"must be a finite real number, got {_show(value)}")
        if not holds(value):
            _fail(name, f"{rule}, got {_show(value)}")
    return check


_POSITIVE = _real("must be > 0", lambda x: x > 0)
_AT_LEAST_ONE = _real("must be >= 1", lambda x: x >= 1)
_NON_NEGATIVE = _real("must be >= 0", lambda x: x >= 0)
_FRACTION = _real("must be in (0, 1]", lambda x: 0 < x <= 1)


def _optional(rule: Rule) -> Rule:
    def check(name: str, value: object) -> None:
        if value is not None:
            rule(name, value)
    return check


def _choice(literal) -> Rule:
    choices = get_args(literal)

    def check(name: str, value: object) -> None:
        if not (isinstance(value, str) and value in choices):
            _fail(name, f"{_show(value)} is not one of {list(choices)}")
    return check


def _pattern(literal) -> Rule:
    """A non-empty tuple of `literal`'s choices (its length is checked against n_layers later)."""
    entry = _choice(literal)

    def check(name: str, value: object) -> None:
        if not isinstance(value, tuple):  # a string would be read letter by letter
            _fail(name, f"must be a tuple of layer kinds, got {_show(value)}")
        if not value:
            _fail(name, "must name at least one layer kind")
        for kind in value:
            entry(name, kind)
    return check


def _factors(name: str, value: object) -> None:
    """LongRoPE's per-pair factors: a non-empty tuple of finite numbers > 0."""
    if not isinstance(value, tuple) or not value:
        _fail(name, f"must be a tuple of finite real numbers, got {_show(value)}")
    for i, factor in enumerate(value):
        _POSITIVE(f"{name}[{i}]", factor)


def _sub_config(cls: type, rules: dict[str, Rule]) -> Rule:
    """None, or an instance of `cls` whose every field passes its rule."""
    def check(name: str, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, cls):  # from_dict builds the class from a JSON object
            _fail(name, f"must be a {cls.__name__} or None, got {_show(value)}")
        for field_name, rule in rules.items():
            rule(f"{name}.{field_name}", getattr(value, field_name))
    return check


ROPE_SCALING_RULES: dict[str, Rule] = {
    "kind": _choice(RopeScalingKind),
    "factor": _AT_LEAST_ONE,
    "original_max_seq_len": _optional(_positive_int),
    "low_freq_factor": _optional(_POSITIVE),  # llama3 divides the original context by it
    "high_freq_factor": _optional(_POSITIVE),
    "beta_fast": _optional(_POSITIVE),  # yarn: rotations, in a log
    "beta_slow": _optional(_POSITIVE),
    "attention_factor": _optional(_POSITIVE),
    "short_factor": _optional(_factors),
    "long_factor": _optional(_factors),
}

MOE_RULES: dict[str, Rule] = {
    "n_experts": _positive_int,
    "n_experts_per_token": _positive_int,
    "router": _choice(RouterKind),
    "d_ff": _optional(_positive_int),
    "router_scales_input": _bool,
    "renormalize": _bool,
    "n_shared_experts": _non_negative_int,
    "shared_d_ff": _optional(_positive_int),
    "shared_expert_gate": _bool,
    "aux_loss_coef": _NON_NEGATIVE,
    "aux_loss": _choice(AuxLossKind),
    "router_z_loss_coef": _NON_NEGATIVE,
}

MODEL_RULES: dict[str, Rule] = {
    "name": _string,
    "hf_model_type": _optional_string,
    **dict.fromkeys(("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                     "max_seq_len"), _positive_int),
    "position": _choice(Position),
    "embedding_scale": _choice(EmbeddingScale),
    "embedding_norm": _bool,
    "tie_embeddings": _bool,
    "lm_head_bias": _bool,
    "final_logit_softcap": _optional(_POSITIVE),
    "logit_scale": _POSITIVE,
    "logit_z_loss_coef": _NON_NEGATIVE,
    "norm": _choice(Norm),
    "norm_eps": _POSITIVE,
    "norm_weight": _bool,
    "norm_bias": _bool,
    "norm_unit_offset": _bool,
    "norm_placement": _choice(NormPlacement),
    "qkv_bias": _bool,
    "attn_out_bias": _bool,
    "qkv_clip": _optional(_POSITIVE),
    "qk_norm": _choice(QkNorm),
    "query_scale_dim": _optional(_positive_int),
    "attn_softcap": _optional(_POSITIVE),
    "sliding_window": _optional(_positive_int),
    "attn_chunk_size": _optional(_positive_int),
    "attn_temperature_floor": _optional(_positive_int),  # floor((pos + 1) / floor)
    "attn_temperature_scale": _optional(_POSITIVE),
    "attn_pattern": _pattern(AttnKind),
    "rope_theta": _POSITIVE,
    "rope_theta_local": _optional(_POSITIVE),
    "rope_layout": _choice(RopeLayout),
    "rope_fraction": _FRACTION,
    "rope_scaling": _sub_config(RopeScaling, ROPE_SCALING_RULES),
    "alibi_max_bias": _POSITIVE,  # slopes 2^(-max_bias * h / n)
    "alibi_slopes": _choice(AlibiSlopes),
    "mlp": _choice(MlpKind),
    "activation": _choice(Activation),
    "mlp_bias": _bool,
    "mlp_pattern": _pattern(MlpLayerKind),
    "moe": _sub_config(MoEConfig, MOE_RULES),
    "parallel_residual": _bool,
    "shared_attn_norm": _bool,
}


def _check_fields(c: ModelConfig) -> None:
    for name, rule in MODEL_RULES.items():
        rule(name, getattr(c, name))


# --- rules between fields ----------------------------------------------------------------


def _check_sizes(c: ModelConfig) -> None:
    if c.n_heads % c.n_kv_heads:
        _fail("n_kv_heads", f"n_heads ({c.n_heads}) must be divisible by n_kv_heads ({c.n_kv_heads})")
    for name in ("attn_pattern", "mlp_pattern"):
        pattern = getattr(c, name)
        if len(pattern) > c.n_layers:
            _fail(name, f"has {len(pattern)} entries for {c.n_layers} layers")


def _check_positions(c: ModelConfig) -> None:
    if c.position != "rope":
        if c.rope_scaling is not None:
            _fail("rope_scaling", f"needs position='rope', got position={c.position!r}")
        return
    if c.rope_dim < 2:
        _fail("rope_fraction", f"rope_fraction * head_dim must cover at least 2 dims, got {c.rope_dim}")
    if c.head_dim % 2 and c.rope_fraction == 1:
        _fail("head_dim", f"full RoPE needs an even head_dim, got {c.head_dim}")
    s = c.rope_scaling
    if s is None:
        return
    if s.kind == "llama3":
        for name in ("original_max_seq_len", "low_freq_factor", "high_freq_factor"):
            if getattr(s, name) is None:
                _fail(f"rope_scaling.{name}", "is required for kind 'llama3'")
        if not s.high_freq_factor >= s.low_freq_factor:  # equal: no band between the two (Llama 4 Scout)
            _fail("rope_scaling.high_freq_factor", f"must be at least low_freq_factor ({s.low_freq_factor})")
    if s.kind == "longrope":  # one factor per rotated pair (HF _compute_longrope_parameters)
        # O picks the factors (spec/MATH.md, "LongRoPE") and its log divides the attention factor
        if s.original_max_seq_len is None or s.original_max_seq_len < 2:
            _fail("rope_scaling.original_max_seq_len",
                  f"kind 'longrope' needs the original context, at least 2, got {s.original_max_seq_len!r}")
        for name in ("short_factor", "long_factor"):
            factors = getattr(s, name)
            if factors is None:
                _fail(f"rope_scaling.{name}", "is required for kind 'longrope'")
            if len(factors) != c.rope_dim // 2:
                _fail(f"rope_scaling.{name}",
                      f"has {len(factors)} entries for rope_dim / 2 = {c.rope_dim // 2} rotated pairs")


def _check_norms(c: ModelConfig) -> None:
    if c.shared_attn_norm and not c.parallel_residual:
        _fail("shared_attn_norm", "only applies with parallel_residual=True")
    if c.norm_bias and c.norm != "layernorm":
        _fail("norm_bias", f"RMSNorm has no bias (norm={c.norm!r})")
    if c.norm_unit_offset and not c.norm_weight:
        _fail("norm_unit_offset", "needs norm_weight=True")
    if c.norm_bias and not c.norm_weight:
        _fail("norm_bias", "a LayerNorm bias without a weight is not a layer any model uses")
    if c.parallel_residual and c.norm_placement != "pre":
        _fail("norm_placement", f"{c.norm_placement!r} is defined for sequential blocks only "
              "(parallel_residual=True takes 'pre')")


def _check_attention(c: ModelConfig) -> None:
    # the pattern holds the kinds the layers have (it is no longer than the stack): it is
    # read as it is, never expanded over n_layers
    for kind, field_name in (("sliding", "sliding_window"), ("chunked", "attn_chunk_size")):
        if kind in c.attn_pattern and getattr(c, field_name) is None:
            _fail(field_name, f"a {kind!r} layer in attn_pattern needs {field_name}")


def _check_moe(c: ModelConfig) -> None:
    has_moe_layers = "moe" in c.mlp_pattern
    if has_moe_layers and c.moe is None:
        _fail("moe", "a 'moe' layer in mlp_pattern needs the moe sub-config")
    if c.moe is None:
        return
    if not has_moe_layers:
        _fail("moe", "is set but mlp_pattern has no 'moe' layer")
    m: MoEConfig = c.moe
    if not m.n_experts_per_token <= m.n_experts:
        _fail("moe.n_experts_per_token", f"needs 0 < k <= n_experts ({m.n_experts}), got {m.n_experts_per_token!r}")
    if m.shared_expert_gate and m.n_shared_experts == 0:
        _fail("moe.shared_expert_gate", "is set but only applies with n_shared_experts > 0")
    if m.shared_d_ff is not None and m.n_shared_experts == 0:
        _fail("moe.shared_d_ff", "is set but only applies with n_shared_experts > 0")
    if c.mlp_bias:  # no MoE of the zoo has expert biases; a bias would be silently dropped
        _fail("mlp_bias", "is not supported with 'moe' layers (the experts have no biases)")


# Knobs that only mean something together with another one: set alone, they would be
# silently ignored, so they are refused.  field -> (the condition it needs, its wording).
_DEPENDENT_KNOBS = {
    "attn_temperature_scale": (lambda c: c.attn_temperature_floor is not None, "attn_temperature_floor"),
    "rope_theta_local": (lambda c: c.position == "rope" and "sliding" in c.attn_pattern,
                         "position='rope' and 'sliding' layers in attn_pattern"),
    "alibi_max_bias": (lambda c: c.position == "alibi", "position='alibi'"),
    "alibi_slopes": (lambda c: c.position == "alibi", "position='alibi'"),
    "sliding_window": (lambda c: "sliding" in c.attn_pattern, "'sliding' layers in attn_pattern"),
    "attn_chunk_size": (lambda c: "chunked" in c.attn_pattern, "'chunked' layers in attn_pattern"),
}


def _check_dependent_knobs(c: ModelConfig) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(c)}
    for name, (applies, needs) in _DEPENDENT_KNOBS.items():
        if getattr(c, name) != defaults[name] and not applies(c):
            _fail(name, f"is set to {_show(getattr(c, name))} but only applies with {needs}")


_CHECKS = (_check_fields, _check_sizes, _check_positions, _check_norms, _check_attention, _check_moe,
           _check_dependent_knobs)


def validate(config: ModelConfig) -> None:
    """Raise ConfigError for the first rule `config` breaks."""
    for check in _CHECKS:
        check(config)
