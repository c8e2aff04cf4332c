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

from lmref.spec.config import (
    Activation, AlibiSlopes, AttnKind, AuxLossKind, EmbeddingScale, FeatureStrategy, MlpKind, MlpLayerKind,
    ModelConfig, MoEConfig, Norm, NormPlacement, Position, QkNorm, RopeLayout, RopeScaling, RopeScalingKind,
    RouterKind, VisionConfig,
)
from lmref.spec.rules import (
    AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Rule, boolean, choice, fail, non_negative_int, optional,
    integer, optional_string, pattern, positive_int, show, string, sub_config,
)


# --- one rule per field ------------------------------------------------------------------


def _factors(name: str, value: object) -> None:
    """LongRoPE's per-pair factors: a non-empty tuple of finite numbers > 0."""
    if not isinstance(value, tuple) or not value:
        fail(name, f"must be a tuple of finite real numbers, got {show(value)}")
    for i, factor in enumerate(value):
        POSITIVE(f"{name}[{i}]", factor)


ROPE_SCALING_RULES: dict[str, Rule] = {
    "kind": choice(RopeScalingKind),
    "factor": AT_LEAST_ONE,
    "original_max_seq_len": optional(positive_int),
    "low_freq_factor": optional(POSITIVE),  # llama3 divides the original context by it
    "high_freq_factor": optional(POSITIVE),
    "beta_fast": optional(POSITIVE),  # yarn: rotations, in a log
    "beta_slow": optional(POSITIVE),
    "attention_factor": optional(POSITIVE),
    "short_factor": optional(_factors),
    "long_factor": optional(_factors),
}

MOE_RULES: dict[str, Rule] = {
    "n_experts": positive_int,
    "n_experts_per_token": positive_int,
    "router": choice(RouterKind),
    "d_ff": optional(positive_int),
    "router_scales_input": boolean,
    "renormalize": boolean,
    "n_shared_experts": non_negative_int,
    "shared_d_ff": optional(positive_int),
    "shared_expert_gate": boolean,
    "aux_loss_coef": NON_NEGATIVE,
    "aux_loss": choice(AuxLossKind),
    "router_z_loss_coef": NON_NEGATIVE,
}

VISION_RULES: dict[str, Rule] = {
    **dict.fromkeys(("image_size", "patch_size", "n_channels", "d_model", "n_layers", "n_heads", "d_ff"),
                    positive_int),
    "activation": choice(Activation),
    "norm_eps": POSITIVE,
    "feature_layer": integer,  # an index into the n_layers + 1 hidden states: its range is checked below
    "feature_strategy": choice(FeatureStrategy),
    "projector_activation": choice(Activation),
    "projector_bias": boolean,
    "image_token_id": non_negative_int,
}

MODEL_RULES: dict[str, Rule] = {
    "name": string,
    "hf_model_type": optional_string,
    **dict.fromkeys(("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                     "max_seq_len"), positive_int),
    "position": choice(Position),
    "embedding_scale": choice(EmbeddingScale),
    "embedding_norm": boolean,
    "tie_embeddings": boolean,
    "lm_head_bias": boolean,
    "final_logit_softcap": optional(POSITIVE),
    "logit_scale": POSITIVE,
    "logit_z_loss_coef": NON_NEGATIVE,
    "norm": choice(Norm),
    "norm_eps": POSITIVE,
    "norm_weight": boolean,
    "norm_bias": boolean,
    "norm_unit_offset": boolean,
    "norm_placement": choice(NormPlacement),
    "qkv_bias": boolean,
    "attn_out_bias": boolean,
    "qkv_clip": optional(POSITIVE),
    "qk_norm": choice(QkNorm),
    "query_scale_dim": optional(positive_int),
    "attn_softcap": optional(POSITIVE),
    "sliding_window": optional(positive_int),
    "attn_chunk_size": optional(positive_int),
    "attn_temperature_floor": optional(positive_int),  # floor((pos + 1) / floor)
    "attn_temperature_scale": optional(POSITIVE),
    "attn_pattern": pattern(AttnKind),
    "rope_theta": POSITIVE,
    "rope_theta_local": optional(POSITIVE),
    "rope_layout": choice(RopeLayout),
    "rope_fraction": FRACTION,
    "rope_scaling": sub_config(RopeScaling, ROPE_SCALING_RULES),
    "alibi_max_bias": POSITIVE,  # slopes 2^(-max_bias * h / n)
    "alibi_slopes": choice(AlibiSlopes),
    "mlp": choice(MlpKind),
    "activation": choice(Activation),
    "mlp_bias": boolean,
    "mlp_pattern": pattern(MlpLayerKind),
    "moe": sub_config(MoEConfig, MOE_RULES),
    "parallel_residual": boolean,
    "shared_attn_norm": boolean,
    "vision": sub_config(VisionConfig, VISION_RULES),
}


def _check_fields(c: ModelConfig) -> None:
    for name, rule in MODEL_RULES.items():
        rule(name, getattr(c, name))


# --- rules between fields ----------------------------------------------------------------


def _check_sizes(c: ModelConfig) -> None:
    if c.n_heads % c.n_kv_heads:
        fail("n_kv_heads", f"n_heads ({c.n_heads}) must be divisible by n_kv_heads ({c.n_kv_heads})")
    for name in ("attn_pattern", "mlp_pattern"):
        pattern = getattr(c, name)
        if len(pattern) > c.n_layers:
            fail(name, f"has {len(pattern)} entries for {c.n_layers} layers")


def _check_positions(c: ModelConfig) -> None:
    if c.position != "rope":
        if c.rope_scaling is not None:
            fail("rope_scaling", f"needs position='rope', got position={c.position!r}")
        return
    if c.rope_dim < 2:
        fail("rope_fraction", f"rope_fraction * head_dim must cover at least 2 dims, got {c.rope_dim}")
    if c.head_dim % 2 and c.rope_fraction == 1:
        fail("head_dim", f"full RoPE needs an even head_dim, got {c.head_dim}")
    s = c.rope_scaling
    if s is None:
        return
    if s.kind == "llama3":
        for name in ("original_max_seq_len", "low_freq_factor", "high_freq_factor"):
            if getattr(s, name) is None:
                fail(f"rope_scaling.{name}", "is required for kind 'llama3'")
        if not s.high_freq_factor >= s.low_freq_factor:  # equal: no band between the two (Llama 4 Scout)
            fail("rope_scaling.high_freq_factor", f"must be at least low_freq_factor ({s.low_freq_factor})")
    if s.kind == "longrope":  # one factor per rotated pair (HF _compute_longrope_parameters)
        # O picks the factors (spec/MATH.md, "LongRoPE") and its log divides the attention factor
        if s.original_max_seq_len is None or s.original_max_seq_len < 2:
            fail("rope_scaling.original_max_seq_len",
                  f"kind 'longrope' needs the original context, at least 2, got {s.original_max_seq_len!r}")
        for name in ("short_factor", "long_factor"):
            factors = getattr(s, name)
            if factors is None:
                fail(f"rope_scaling.{name}", "is required for kind 'longrope'")
            if len(factors) != c.rope_dim // 2:
                fail(f"rope_scaling.{name}",
                      f"has {len(factors)} entries for rope_dim / 2 = {c.rope_dim // 2} rotated pairs")


def _check_norms(c: ModelConfig) -> None:
    if c.shared_attn_norm and not c.parallel_residual:
        fail("shared_attn_norm", "only applies with parallel_residual=True")
    if c.norm_bias and c.norm != "layernorm":
        fail("norm_bias", f"RMSNorm has no bias (norm={c.norm!r})")
    if c.norm_unit_offset and not c.norm_weight:
        fail("norm_unit_offset", "needs norm_weight=True")
    if c.norm_bias and not c.norm_weight:
        fail("norm_bias", "a LayerNorm bias without a weight is not a layer any model uses")
    if c.parallel_residual and c.norm_placement != "pre":
        fail("norm_placement", f"{c.norm_placement!r} is defined for sequential blocks only "
              "(parallel_residual=True takes 'pre')")


def _check_attention(c: ModelConfig) -> None:
    # the pattern holds the kinds the layers have (it is no longer than the stack): it is
    # read as it is, never expanded over n_layers
    for kind, field_name in (("sliding", "sliding_window"), ("chunked", "attn_chunk_size")):
        if kind in c.attn_pattern and getattr(c, field_name) is None:
            fail(field_name, f"a {kind!r} layer in attn_pattern needs {field_name}")


def _check_moe(c: ModelConfig) -> None:
    has_moe_layers = "moe" in c.mlp_pattern
    if has_moe_layers and c.moe is None:
        fail("moe", "a 'moe' layer in mlp_pattern needs the moe sub-config")
    if c.moe is None:
        return
    if not has_moe_layers:
        fail("moe", "is set but mlp_pattern has no 'moe' layer")
    m: MoEConfig = c.moe
    if not m.n_experts_per_token <= m.n_experts:
        fail("moe.n_experts_per_token", f"needs 0 < k <= n_experts ({m.n_experts}), got {m.n_experts_per_token!r}")
    if m.shared_expert_gate and m.n_shared_experts == 0:
        fail("moe.shared_expert_gate", "is set but only applies with n_shared_experts > 0")
    if m.shared_d_ff is not None and m.n_shared_experts == 0:
        fail("moe.shared_d_ff", "is set but only applies with n_shared_experts > 0")
    if c.mlp_bias:  # no MoE of the zoo has expert biases; a bias would be silently dropped
        fail("mlp_bias", "is not supported with 'moe' layers (the experts have no biases)")


def _check_vision(c: ModelConfig) -> None:
    v: VisionConfig | None = c.vision
    if v is None:
        return
    if v.image_size % v.patch_size:
        fail("vision.patch_size", f"image_size ({v.image_size}) must be a multiple of patch_size ({v.patch_size})")
    if v.d_model % v.n_heads:
        fail("vision.n_heads", f"the tower's d_model ({v.d_model}) must be divisible by n_heads ({v.n_heads})")
    if not -(v.n_layers + 1) <= v.feature_layer <= v.n_layers:
        fail("vision.feature_layer", f"must index the {v.n_layers + 1} hidden states (n_layers + 1: the "
             f"embeddings, then each layer's output), in [{-(v.n_layers + 1)}, {v.n_layers}], got {v.feature_layer}")
    if v.image_token_id >= c.vocab_size:  # the placeholder is looked up before its row is replaced
        fail("vision.image_token_id", f"must be below vocab_size ({c.vocab_size}), got {v.image_token_id}")
    if c.rope_scaling is not None and c.rope_scaling.kind == "longrope":
        fail("vision", "is not defined with LongRoPE scaling: a decode step that crosses the original context "
             "re-runs the sequence from its tokens (spec/MATH.md, \"LongRoPE\"), which do not carry the image")


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
            fail(name, f"is set to {show(getattr(c, name))} but only applies with {needs}")


_CHECKS = (_check_fields, _check_sizes, _check_positions, _check_norms, _check_attention, _check_moe,
           _check_vision, _check_dependent_knobs)


def validate(config: ModelConfig) -> None:
    """Raise ConfigError for the first rule `config` breaks."""
    for check in _CHECKS:
        check(config)
