"""`ModelConfig`: one frozen dataclass that describes every architecture of the zoo.

Categorical choices are `Literal`s, structure is flags, per-layer structure is data (a
pattern of layer kinds repeated over the depth).  Derived values are properties.
`__post_init__` only validates and raises `ConfigError` naming the field and the rule.

Fields whose math no backend implements yet are accepted by the schema (so presets of
later architectures can already be written down) but rejected by validation with
"not implemented yet": a config is never silently run with a knob ignored.

The facts behind each knob come from the papers and Hugging Face transformers' modeling
files (`src/transformers/models/<type>/modeling_<type>.py`); each field's comment names a
model that uses it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

Norm = Literal["layernorm", "rmsnorm"]
# pre: x + f(norm(x)) (GPT-2, LLaMA).  sandwich: x + post_norm(f(pre_norm(x))) (Gemma 2/3).
# post_sublayer: x + norm(f(x)), no input norm (OLMo 2's "reordered" norm).
NormPlacement = Literal["pre", "sandwich", "post_sublayer"]
Activation = Literal["gelu", "gelu_tanh", "silu", "relu"]
# plain: down(act(up(x))) (GPT-2).  gated: down(act(gate(x)) * up(x)) (SwiGLU, GeGLU).
MlpKind = Literal["plain", "gated"]
Position = Literal["learned", "rope", "alibi", "none"]
# halves: rotate_half pairs (i, i + d/2) (GPT-NeoX, HF LLaMA).  interleaved: pairs (2i, 2i+1)
# (GPT-J, Meta's original LLaMA code, Llama 4).
RopeLayout = Literal["halves", "interleaved"]
RopeScalingKind = Literal["linear", "dynamic", "yarn", "llama3", "longrope"]
# global: causal over every earlier key.  sliding: causal band of `sliding_window` keys
# (Mistral, Gemma 2/3).  chunked: causal within blocks of `attn_chunk_size` (Llama 4).
# global_nope: causal, no RoPE (Llama 4's every-4th layer).
AttnKind = Literal["global", "sliding", "chunked", "global_nope"]
MlpLayerKind = Literal["dense", "moe"]
# per_head: RMSNorm over head_dim shared by heads (Qwen3, Gemma 3).  per_projection: RMSNorm
# over the whole q / k projection (OLMo 2).  l2: weightless L2 norm (Llama 4).
QkNorm = Literal["none", "per_head", "per_projection", "l2"]
EmbeddingScale = Literal["none", "sqrt_d_model"]
# softmax_topk: softmax over all experts, then top-k (Mixtral, Qwen-MoE).  sigmoid_topk:
# top-k on raw logits, sigmoid of the chosen ones (Llama 4).
RouterKind = Literal["softmax_topk", "sigmoid_topk"]


class ConfigError(ValueError):
    """An invalid `ModelConfig`: the message names the field and the rule it breaks."""


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE frequency scaling for long context (HF `rope_scaling` / `rope_parameters`).

    Exact formulas: spec/MATH.md, "RoPE scaling"; source `modeling_rope_utils.py`.
    """

    kind: RopeScalingKind
    factor: float
    original_max_seq_len: int | None = None  # llama3, yarn, longrope, dynamic
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    attention_factor: float | None = None  # yarn, longrope
    short_factor: tuple[float, ...] | None = None  # longrope
    long_factor: tuple[float, ...] | None = None  # longrope


# Implemented by every backend today.  Later issues widen these sets as the math lands.
IMPLEMENTED: dict[str, frozenset] = {
    "norm_placement": frozenset({"pre"}),
    "attn_kinds": frozenset({"global"}),
    "mlp_kinds": frozenset({"dense"}),
    "qk_norm": frozenset({"none"}),
    "rope_scaling": frozenset({"linear", "llama3"}),
    "embedding_scale": frozenset({"none"}),
}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Every knob of a decoder-only LM.  Orientation and parameter names: spec/params.py."""

    name: str = "custom"  # a label for reports; never branched on

    # --- sizes ------------------------------------------------------------------------
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads: MHA; 1: MQA; in between: GQA (query head h reads kv head h // group)
    head_dim: int  # decoupled from d_model / n_heads (Gemma: 256 with d_model 2048)
    d_ff: int  # MLP hidden width (per expert for MoE layers)
    max_seq_len: int  # the context: longer inputs are refused

    # --- embeddings and head ----------------------------------------------------------
    position: Position
    embedding_scale: EmbeddingScale = "none"  # Gemma multiplies embeddings by sqrt(d_model)
    embedding_norm: bool = False  # BLOOM: LayerNorm right after the token embedding
    tie_embeddings: bool = False  # head weight = token embedding (GPT-2, OLMo-1B, Gemma)
    lm_head_bias: bool = False  # Phi-2, GPT-J
    final_logit_softcap: float | None = None  # Gemma 2: logits = c * tanh(logits / c)
    logit_scale: float = 1.0  # Cohere multiplies logits by 0.0625

    # --- normalisation ----------------------------------------------------------------
    norm: Norm
    norm_eps: float
    norm_weight: bool = True  # False: OLMo-1's non-parametric LayerNorm
    norm_bias: bool = False  # LayerNorm bias (GPT-2 yes; MPT, DBRX, OLMo no)
    norm_unit_offset: bool = False  # Gemma: scale by (1 + w), w stored
    norm_placement: NormPlacement = "pre"

    # --- attention --------------------------------------------------------------------
    qkv_bias: bool = False  # GPT-2, Qwen2, Phi
    attn_out_bias: bool = False  # GPT-2, Phi
    qkv_clip: float | None = None  # OLMo/DBRX clip_qkv: clamp q, k, v to [-c, c] after projection
    qk_norm: QkNorm = "none"
    query_scale_dim: int | None = None  # scores * query_scale_dim**-0.5 (Gemma 2); None: head_dim
    attn_softcap: float | None = None  # Gemma 2: scores = c * tanh(scores / c), before the mask
    sliding_window: int | None = None  # keys k with q - W < k <= q (HF masking_utils)
    attn_chunk_size: int | None = None  # Llama 4 chunked attention
    # Llama 4 NoPE layers scale q by log1p(floor((pos + 1) / floor)) * scale + 1.
    attn_temperature_floor: int | None = None
    attn_temperature_scale: float | None = None
    # Layer kinds, repeated cyclically over the depth and truncated: ("sliding", "global") is
    # Gemma 2's alternation.  A tuple of exactly n_layers entries spells the layers out.
    attn_pattern: tuple[AttnKind, ...] = ("global",)

    # --- positions --------------------------------------------------------------------
    rope_theta: float = 10_000.0
    rope_theta_local: float | None = None  # Gemma 3 sliding layers use their own base
    rope_layout: RopeLayout = "halves"
    rope_fraction: float = 1.0  # the first rope_fraction * head_dim dims rotate (NeoX 0.25, Phi-2 0.4)
    rope_scaling: RopeScaling | None = None
    alibi_max_bias: float = 8.0  # slopes 2^(-max_bias * i / n) (Press et al. 2022; MPT alibi_bias_max)

    # --- MLP --------------------------------------------------------------------------
    mlp: MlpKind
    activation: Activation
    mlp_bias: bool = False

    # --- block ------------------------------------------------------------------------
    # Parallel: x + attn(n1(x)) + mlp(n2(x)) (GPT-J, NeoX, PaLM); with shared_attn_norm, n2 = n1.
    parallel_residual: bool = False
    shared_attn_norm: bool = False

    # --- mixture of experts -------------------------------------------------------------
    mlp_pattern: tuple[MlpLayerKind, ...] = ("dense",)
    n_experts: int = 0
    n_experts_per_token: int = 0
    router: RouterKind = "softmax_topk"
    moe_d_ff: int | None = None  # expert width when it differs from the dense d_ff (Llama 4)
    router_scales_input: bool = False  # Llama 4: the router weight scales the expert input
    router_renormalize: bool = True  # Mixtral renormalises the top-k weights; Qwen1.5-MoE not
    n_shared_experts: int = 0
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid gate on the shared expert
    router_aux_loss_coef: float = 0.0

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)

    # --- derived values ---------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def kv_group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def rope_dim(self) -> int:
        """Rotated dims per head (even); the rest pass through (HF: int(hd * partial_factor))."""
        return int(self.head_dim * self.rope_fraction) // 2 * 2

    @property
    def attn_scale(self) -> float:
        return (self.query_scale_dim or self.head_dim) ** -0.5

    @property
    def layer_attn_kinds(self) -> tuple[AttnKind, ...]:
        return _expand(self.attn_pattern, self.n_layers)

    @property
    def layer_mlp_kinds(self) -> tuple[MlpLayerKind, ...]:
        return _expand(self.mlp_pattern, self.n_layers)

    # --- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"missing required config field(s): {', '.join(missing)}")
        values = dict(data)
        for key in ("attn_pattern", "mlp_pattern"):
            if key in values:
                values[key] = tuple(values[key])
        if values.get("rope_scaling") is not None:
            values["rope_scaling"] = _rope_scaling_from_dict(values["rope_scaling"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def _expand(pattern: tuple, n_layers: int) -> tuple:
    return tuple(pattern[i % len(pattern)] for i in range(n_layers))


def _rope_scaling_from_dict(data: dict[str, Any]) -> RopeScaling:
    known = {f.name for f in dataclasses.fields(RopeScaling)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown rope_scaling field(s): {', '.join(unknown)}")
    values = dict(data)
    for key in ("short_factor", "long_factor"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return RopeScaling(**values)


# --- validation ---------------------------------------------------------------------------


def _fail(field_name: str, rule: str) -> None:
    raise ConfigError(f"{field_name}: {rule}")


def _not_implemented(field_name: str, value: object) -> None:
    _fail(field_name, f"{value!r} is not implemented yet")


# Fields whose value must be one of a Literal's choices (tuples: every entry).
_CHOICES = {
    "norm": Norm, "norm_placement": NormPlacement, "activation": Activation, "mlp": MlpKind,
    "position": Position, "rope_layout": RopeLayout, "attn_pattern": AttnKind,
    "mlp_pattern": MlpLayerKind, "qk_norm": QkNorm, "embedding_scale": EmbeddingScale,
    "router": RouterKind,
}


def _check_literals(c: ModelConfig) -> None:
    for name, literal in _CHOICES.items():
        value = getattr(c, name)
        for v in value if isinstance(value, tuple) else (value,):
            if v not in get_args(literal):
                _fail(name, f"{v!r} is not one of {list(get_args(literal))}")
    if c.rope_scaling is not None and c.rope_scaling.kind not in get_args(RopeScalingKind):
        _fail("rope_scaling.kind", f"{c.rope_scaling.kind!r} is not one of {list(get_args(RopeScalingKind))}")


def _check_sizes(c: ModelConfig) -> None:
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(name, f"must be a positive integer, got {value!r}")
    if c.n_heads % c.n_kv_heads:
        _fail("n_kv_heads", f"n_heads ({c.n_heads}) must be divisible by n_kv_heads ({c.n_kv_heads})")
    if not (isinstance(c.norm_eps, float | int) and c.norm_eps > 0):
        _fail("norm_eps", f"must be > 0, got {c.norm_eps!r}")
    if not c.attn_pattern:
        _fail("attn_pattern", "must name at least one layer kind")
    if not c.mlp_pattern:
        _fail("mlp_pattern", "must name at least one layer kind")


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


def _check_structure(c: ModelConfig) -> None:
    if c.shared_attn_norm and not c.parallel_residual:
        _fail("shared_attn_norm", "only applies with parallel_residual=True")
    if c.norm_bias and c.norm != "layernorm":
        _fail("norm_bias", f"RMSNorm has no bias (norm={c.norm!r})")
    if c.norm_unit_offset and not c.norm_weight:
        _fail("norm_unit_offset", "needs norm_weight=True")
    if c.norm_bias and not c.norm_weight:
        _fail("norm_bias", "a LayerNorm bias without a weight is not a layer any model uses")
    if c.qkv_clip is not None and not c.qkv_clip > 0:
        _fail("qkv_clip", f"must be > 0, got {c.qkv_clip!r}")
    if c.logit_scale <= 0:
        _fail("logit_scale", f"must be > 0, got {c.logit_scale!r}")
    if "sliding" in c.layer_attn_kinds and c.sliding_window is None:
        _fail("sliding_window", "a 'sliding' layer in attn_pattern needs sliding_window")
    if "moe" in c.layer_mlp_kinds and not 0 < c.n_experts_per_token <= c.n_experts:
        _fail("n_experts_per_token", f"needs 0 < k <= n_experts ({c.n_experts}), got {c.n_experts_per_token}")
    if len(c.attn_pattern) > c.n_layers:
        _fail("attn_pattern", f"has {len(c.attn_pattern)} entries for {c.n_layers} layers")


# Knobs that only mean something together with another one: set alone, they would be
# silently ignored, so they are refused.  field -> (the condition it needs, its wording).
_DEPENDENT_KNOBS = {
    "n_experts_per_token": (lambda c: "moe" in c.mlp_pattern, "MoE layers in mlp_pattern"),
    "moe_d_ff": (lambda c: "moe" in c.mlp_pattern, "MoE layers in mlp_pattern"),
    "router": (lambda c: "moe" in c.mlp_pattern, "MoE layers in mlp_pattern"),
    "router_scales_input": (lambda c: "moe" in c.mlp_pattern, "MoE layers in mlp_pattern"),
    "router_renormalize": (lambda c: "moe" in c.mlp_pattern, "MoE layers in mlp_pattern"),
    "n_shared_experts": (lambda c: "moe" in c.mlp_pattern, "MoE layers in mlp_pattern"),
    "shared_expert_gate": (lambda c: c.n_shared_experts > 0, "n_shared_experts > 0"),
    "router_aux_loss_coef": (lambda c: "moe" in c.mlp_pattern, "MoE layers in mlp_pattern"),
    "attn_temperature_scale": (lambda c: c.attn_temperature_floor is not None, "attn_temperature_floor"),
    "rope_theta_local": (lambda c: c.position == "rope", "position='rope'"),
    "alibi_max_bias": (lambda c: c.position == "alibi", "position='alibi'"),
}


def _check_dependent_knobs(c: ModelConfig) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(c)}
    for name, (applies, needs) in _DEPENDENT_KNOBS.items():
        if getattr(c, name) != defaults[name] and not applies(c):
            _fail(name, f"is set to {getattr(c, name)!r} but only applies with {needs}")


def _check_implemented(c: ModelConfig) -> None:
    """Reject every knob whose math no backend computes yet (never ignore one silently)."""
    if c.norm_placement not in IMPLEMENTED["norm_placement"]:
        _not_implemented("norm_placement", c.norm_placement)
    for kind in c.attn_pattern:
        if kind not in IMPLEMENTED["attn_kinds"]:
            _not_implemented("attn_pattern", kind)
    for kind in c.mlp_pattern:
        if kind not in IMPLEMENTED["mlp_kinds"]:
            _not_implemented("mlp_pattern", kind)
    if c.qk_norm not in IMPLEMENTED["qk_norm"]:
        _not_implemented("qk_norm", c.qk_norm)
    if c.embedding_scale not in IMPLEMENTED["embedding_scale"]:
        _not_implemented("embedding_scale", c.embedding_scale)
    if c.rope_scaling is not None and c.rope_scaling.kind not in IMPLEMENTED["rope_scaling"]:
        _not_implemented("rope_scaling.kind", c.rope_scaling.kind)
    unimplemented_values = {
        "position": (c.position, "none"),
        "embedding_norm": (c.embedding_norm, True),
        "parallel_residual": (c.parallel_residual, True),
        "norm_unit_offset": (c.norm_unit_offset, True),
        "rope_theta_local": (c.rope_theta_local is not None, True),
        "final_logit_softcap": (c.final_logit_softcap is not None, True),
        "attn_softcap": (c.attn_softcap is not None, True),
        "sliding_window": (c.sliding_window is not None, True),
        "attn_chunk_size": (c.attn_chunk_size is not None, True),
        "attn_temperature_floor": (c.attn_temperature_floor is not None, True),
        "query_scale_dim": (c.query_scale_dim is not None, True),
        "logit_scale": (c.logit_scale != 1.0, True),
        "n_experts": (c.n_experts > 0, True),
    }
    for name, (value, unimplemented) in unimplemented_values.items():
        if value == unimplemented:
            _not_implemented(name, getattr(c, name))


_CHECKS = (_check_literals, _check_sizes, _check_positions, _check_structure, _check_dependent_knobs,
           _check_implemented)
