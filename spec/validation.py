"""What a `ModelConfig` may mean: every rule `__post_init__` checks, each failing with a
`ConfigError` that names the field and the rule (e.g. `n_heads (12) must be divisible by
n_kv_heads (5)`).

Validation says whether a config is meaningful, never whether some backend computes it:
that is each backend's declared feature set (spec/features.py).
"""

from __future__ import annotations

import dataclasses
from typing import get_args

from lmref.spec.config import (
    Activation, AttnKind, ConfigError, EmbeddingScale, MlpKind, MlpLayerKind, ModelConfig, MoEConfig, Norm,
    NormPlacement, Position, QkNorm, RopeLayout, RopeScalingKind, RouterKind,
)


def _fail(field_name: str, rule: str) -> None:
    raise ConfigError(f"{field_name}: {rule}")


# Fields whose value must be one of a Literal's choices (tuples: every entry).
_CHOICES = {
    "norm": Norm, "norm_placement": NormPlacement, "activation": Activation, "mlp": MlpKind,
    "position": Position, "rope_layout": RopeLayout, "attn_pattern": AttnKind,
    "mlp_pattern": MlpLayerKind, "qk_norm": QkNorm, "embedding_scale": EmbeddingScale,
}


def _check_choice(name: str, value: object, literal) -> None:
    for v in value if isinstance(value, tuple) else (value,):
        if v not in get_args(literal):
            _fail(name, f"{v!r} is not one of {list(get_args(literal))}")


def _check_literals(c: ModelConfig) -> None:
    for name, literal in _CHOICES.items():
        _check_choice(name, getattr(c, name), literal)
    if c.rope_scaling is not None:
        _check_choice("rope_scaling.kind", c.rope_scaling.kind, RopeScalingKind)
    if c.moe is not None:
        _check_choice("moe.router", c.moe.router, RouterKind)


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        _fail(name, f"must be a positive integer, got {value!r}")


def _check_sizes(c: ModelConfig) -> None:
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len"):
        _positive_int(name, getattr(c, name))
    if c.n_heads % c.n_kv_heads:
        _fail("n_kv_heads", f"n_heads ({c.n_heads}) must be divisible by n_kv_heads ({c.n_kv_heads})")
    if not (isinstance(c.norm_eps, float | int) and c.norm_eps > 0):
        _fail("norm_eps", f"must be > 0, got {c.norm_eps!r}")
    for name in ("attn_pattern", "mlp_pattern"):
        pattern = getattr(c, name)
        if not pattern:
            _fail(name, "must name at least one layer kind")
        if len(pattern) > c.n_layers:
            _fail(name, f"has {len(pattern)} entries for {c.n_layers} layers")


def _check_positions(c: ModelConfig) -> None:
    if c.position != "rope":
        if c.rope_scaling is not None:
            _fail("rope_scaling", f"needs position='rope', got position={c.position!r}")
        return
    if not c.rope_theta > 0:
        _fail("rope_theta", f"must be > 0, got {c.rope_theta!r}")
    if not 0 < c.rope_fraction <= 1:
        _fail("rope_fraction", f"must be in (0, 1], got {c.rope_fraction!r}")
    if c.rope_dim < 2:
        _fail("rope_fraction", f"rope_fraction * head_dim must cover at least 2 dims, got {c.rope_dim}")
    if c.head_dim % 2 and c.rope_fraction == 1:
        _fail("head_dim", f"full RoPE needs an even head_dim, got {c.head_dim}")
    s = c.rope_scaling
    if s is None:
        return
    if not s.factor >= 1:
        _fail("rope_scaling.factor", f"must be >= 1, got {s.factor!r}")
    if s.kind == "llama3":
        for name in ("original_max_seq_len", "low_freq_factor", "high_freq_factor"):
            if getattr(s, name) is None:
                _fail(f"rope_scaling.{name}", "is required for kind 'llama3'")
        if not s.high_freq_factor > s.low_freq_factor:
            _fail("rope_scaling.high_freq_factor", f"must exceed low_freq_factor ({s.low_freq_factor})")


def _check_norms(c: ModelConfig) -> None:
    if c.shared_attn_norm and not c.parallel_residual:
        _fail("shared_attn_norm", "only applies with parallel_residual=True")
    if c.norm_bias and c.norm != "layernorm":
        _fail("norm_bias", f"RMSNorm has no bias (norm={c.norm!r})")
    if c.norm_unit_offset and not c.norm_weight:
        _fail("norm_unit_offset", "needs norm_weight=True")
    if c.norm_bias and not c.norm_weight:
        _fail("norm_bias", "a LayerNorm bias without a weight is not a layer any model uses")


def _check_attention(c: ModelConfig) -> None:
    for name in ("qkv_clip", "attn_softcap", "final_logit_softcap"):
        value = getattr(c, name)
        if value is not None and not value > 0:
            _fail(name, f"must be > 0, got {value!r}")
    if c.logit_scale <= 0:
        _fail("logit_scale", f"must be > 0, got {c.logit_scale!r}")
    kinds = c.layer_attn_kinds
    for kind, field_name in (("sliding", "sliding_window"), ("chunked", "attn_chunk_size")):
        value = getattr(c, field_name)
        if kind in kinds and value is None:
            _fail(field_name, f"a {kind!r} layer in attn_pattern needs {field_name}")
        if value is not None:
            _positive_int(field_name, value)
    if c.query_scale_dim is not None:
        _positive_int("query_scale_dim", c.query_scale_dim)


def _check_moe(c: ModelConfig) -> None:
    has_moe_layers = "moe" in c.layer_mlp_kinds
    if has_moe_layers and c.moe is None:
        _fail("moe", "a 'moe' layer in mlp_pattern needs the moe sub-config")
    if c.moe is None:
        return
    if not has_moe_layers:
        _fail("moe", "is set but mlp_pattern has no 'moe' layer")
    m: MoEConfig = c.moe
    _positive_int("moe.n_experts", m.n_experts)
    if not (isinstance(m.n_experts_per_token, int) and 0 < m.n_experts_per_token <= m.n_experts):
        _fail("moe.n_experts_per_token", f"needs 0 < k <= n_experts ({m.n_experts}), got {m.n_experts_per_token!r}")
    if m.d_ff is not None:
        _positive_int("moe.d_ff", m.d_ff)
    if m.shared_expert_gate and m.n_shared_experts == 0:
        _fail("moe.shared_expert_gate", "is set but only applies with n_shared_experts > 0")


# Knobs that only mean something together with another one: set alone, they would be
# silently ignored, so they are refused.  field -> (the condition it needs, its wording).
_DEPENDENT_KNOBS = {
    "attn_temperature_scale": (lambda c: c.attn_temperature_floor is not None, "attn_temperature_floor"),
    "rope_theta_local": (lambda c: c.position == "rope", "position='rope'"),
    "alibi_max_bias": (lambda c: c.position == "alibi", "position='alibi'"),
    "sliding_window": (lambda c: "sliding" in c.layer_attn_kinds, "'sliding' layers in attn_pattern"),
    "attn_chunk_size": (lambda c: "chunked" in c.layer_attn_kinds, "'chunked' layers in attn_pattern"),
}


def _check_dependent_knobs(c: ModelConfig) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(c)}
    for name, (applies, needs) in _DEPENDENT_KNOBS.items():
        if getattr(c, name) != defaults[name] and not applies(c):
            _fail(name, f"is set to {getattr(c, name)!r} but only applies with {needs}")


_CHECKS = (_check_literals, _check_sizes, _check_positions, _check_norms, _check_attention, _check_moe,
           _check_dependent_knobs)


def validate(config: ModelConfig) -> None:
    """Raise ConfigError for the first rule `config` breaks."""
    for check in _CHECKS:
        check(config)
