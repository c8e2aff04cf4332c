"""`ModelConfig`: one frozen dataclass that describes every architecture of the zoo.

Categorical choices are `Literal`s, structure is flags, per-layer structure is data (a
pattern of layer kinds repeated over the depth), and optional parts are sub-configs
(`rope_scaling`, `moe`).  Derived values are properties.  `__post_init__` only validates
(spec/validation.py) and raises `ConfigError` naming the field and the rule.

The schema says what a config may mean; it does not say which backend computes it.  Each
backend declares the features it implements (spec/features.py) and refuses a config that
needs one it lacks, naming the feature: a knob is never silently ignored.

The facts behind each knob come from the papers and Hugging Face transformers' modeling
files (`src/transformers/models/<type>/modeling_<type>.py`); each field's comment names a
model that uses it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

Norm = Literal["layernorm", "rmsnorm"]
# pre: x + f(norm(x)) (GPT-2, LLaMA).  sandwich: x + post_norm(f(pre_norm(x))) (Gemma 2/3).
# post_sublayer: x + norm(f(x)), no input norm (OLMo 2's "reordered" norm).
NormPlacement = Literal["pre", "sandwich", "post_sublayer"]
# gelu_tanh_truncated: the tanh GELU with sqrt(2/pi) written 0.79788456 (BLOOM: Megatron-DeepSpeed's
# fused bias_gelu, transformers' bloom_gelu_forward); spec/MATH.md, "Activations and MLP".
# quick_gelu: x sigmoid(1.702 x) (OpenAI's CLIP `QuickGELU`; transformers `QuickGELUActivation`).
Activation = Literal["gelu", "gelu_tanh", "gelu_tanh_truncated", "silu", "relu", "quick_gelu"]
# plain: down(act(up(x))) (GPT-2).  gated: down(act(gate(x)) * up(x)) (SwiGLU, GeGLU).
MlpKind = Literal["plain", "gated"]
Position = Literal["learned", "rope", "alibi", "none"]
# How n ALiBi heads get their slopes (spec/MATH.md "ALiBi"): "press", the paper's reference
# code (MPT, BLOOM); "geometric", 2^(-max_bias * h / n) for every n (AI2's OLMo code).
AlibiSlopes = Literal["press", "geometric"]
# halves: rotate_half pairs (i, i + d/2) (GPT-NeoX, HF LLaMA).  interleaved: pairs (2i, 2i+1)
# (GPT-J, Meta's original LLaMA code, Llama 4).
RopeLayout = Literal["halves", "interleaved"]
RopeScalingKind = Literal["linear", "dynamic", "yarn", "llama3", "longrope"]
# global: causal over every earlier key.  sliding: causal band of `sliding_window` keys
# (Mistral, Gemma 2/3).  chunked: causal within blocks of `attn_chunk_size` (Llama 4).
# global_nope: causal, no RoPE (Llama 4's every-4th layer).  The mask rules: spec/MATH.md.
AttnKind = Literal["global", "sliding", "chunked", "global_nope"]
MlpLayerKind = Literal["dense", "moe"]
# per_head: RMSNorm over head_dim shared by heads (Qwen3, Gemma 3).  per_projection: RMSNorm
# over the whole q / k projection (OLMo 2).  l2: weightless L2 norm (Llama 4).
QkNorm = Literal["none", "per_head", "per_projection", "l2"]
EmbeddingScale = Literal["none", "sqrt_d_model"]
# softmax_topk: softmax over all experts, then top-k (Mixtral, Qwen-MoE).  sigmoid_topk:
# top-k on raw logits, sigmoid of the chosen ones (Llama 4).
RouterKind = Literal["softmax_topk", "sigmoid_topk"]
# How the load-balancing loss gathers the MoE layers (spec/MATH.md, "MoE"): "pooled" over the
# rows of every layer together (transformers' load_balancing_loss_func), "per_layer" averaged
# over the layers (MegaBlocks' batched_load_balancing_loss: DBRX, OLMoE).
AuxLossKind = Literal["pooled", "per_layer"]
# Which vision-tower positions become image tokens (LLaVA's vision_feature_select_strategy):
# "drop_class" drops the class token ("default"), "full" keeps it.
FeatureStrategy = Literal["drop_class", "full"]


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


@dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """The mixture-of-experts layers (the `moe` entries of `mlp_pattern`)."""

    n_experts: int
    n_experts_per_token: int  # k of the top-k routing
    router: RouterKind = "softmax_topk"
    d_ff: int | None = None  # expert width when it differs from the dense d_ff (Qwen-MoE, Llama 4)
    router_scales_input: bool = False  # Llama 4: the router weight scales the expert input
    renormalize: bool = True  # Mixtral renormalises the top-k weights; Qwen1.5-MoE not
    # Shared experts: one always-on MLP beside the routed ones, of width shared_d_ff (Qwen2-MoE's
    # shared_expert_intermediate_size) or, when None, n_shared_experts x the expert width.
    n_shared_experts: int = 0
    shared_d_ff: int | None = None
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid gate on the shared expert
    # Weight of the load-balancing loss added to the training loss, and its kind (spec/MATH.md, "MoE").
    aux_loss_coef: float = 0.0
    aux_loss: AuxLossKind = "pooled"
    # Weight of the router z-loss (OLMoE's MegaBlocks fork: mean of logsumexp(z)^2, divided by k).
    router_z_loss_coef: float = 0.0


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """A LLaVA-style image pathway: a CLIP ViT vision tower, a projector into d_model, and the
    image placeholder tokens it fills (spec/MATH.md, "Vision"; parameters: spec/vision.py).

    The tower (Radford et al. 2021, CLIP; Dosovitskiy et al. 2021, ViT): patches of
    `patch_size` pixels embedded by a linear map (the patch convolution), a class token,
    learned positions, a LayerNorm before the encoder, `n_layers` pre-norm encoder layers
    (bidirectional MHA with biases, an MLP with biases and `activation`), LayerNorms with bias
    and `norm_eps`.  LLaVA reads the hidden states after `feature_layer` (an index into the
    n_layers + 1 states, the first being the pre-LayerNorm's output; -2: the penultimate
    layer's), drops the class token (`feature_strategy`), and projects each patch with
    linear -> `projector_activation` -> linear (Liu et al. 2023, LLaVA-1.5's "mlp2x_gelu").
    """

    image_size: int  # square images of image_size x image_size pixels
    patch_size: int  # image_size must be a multiple: (image_size / patch_size)^2 patches
    n_channels: int = 3
    d_model: int  # the tower's width
    n_layers: int
    n_heads: int
    d_ff: int
    activation: Activation = "quick_gelu"  # CLIP's hidden_act
    norm_eps: float = 1e-5  # CLIP's layer_norm_eps
    feature_layer: int = -2  # transformers' vision_feature_layer
    feature_strategy: FeatureStrategy = "drop_class"
    projector_activation: Activation = "gelu"  # transformers' projector_hidden_act
    projector_bias: bool = True  # transformers' multimodal_projector_bias
    image_token_id: int  # the placeholder token the image's features replace (llava-hf: 32000)

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2

    @property
    def tokens_per_image(self) -> int:
        """Image tokens one image fills: its patches, plus the class token when kept."""
        return self.n_patches + (self.feature_strategy == "full")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def layers_run(self) -> int:
        """Encoder layers whose output reaches the features (the later ones exist but do not)."""
        return self.feature_layer % (self.n_layers + 1)


# Optional sub-configs: field -> class (from_dict rebuilds them).
SUBCONFIGS: dict[str, type] = {"rope_scaling": RopeScaling, "moe": MoEConfig, "vision": VisionConfig}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Every knob of a decoder-only LM.  Orientation and parameter names: spec/params.py."""

    name: str = "custom"  # a label for reports; never branched on
    # The Hugging Face `model_type` that holds this architecture (None: transformers has no
    # class for it).  The converter reads it; the math never does.
    hf_model_type: str | None = None

    # --- sizes ------------------------------------------------------------------------
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int  # == n_heads: MHA; 1: MQA; in between: GQA (query head h reads kv head h // group)
    head_dim: int  # decoupled from d_model / n_heads (Gemma: 256 with d_model 2048)
    d_ff: int  # MLP hidden width of the dense layers
    max_seq_len: int  # the context: longer inputs are refused

    # --- embeddings and head ----------------------------------------------------------
    position: Position
    embedding_scale: EmbeddingScale = "none"  # Gemma multiplies embeddings by sqrt(d_model)
    embedding_norm: bool = False  # BLOOM: LayerNorm right after the token embedding
    tie_embeddings: bool = False  # head weight = token embedding (GPT-2, OLMo-1B, Gemma)
    lm_head_bias: bool = False  # Phi-2, GPT-J
    final_logit_softcap: float | None = None  # Gemma 2: logits = c * tanh(logits / c)
    logit_scale: float = 1.0  # logits multiplied after the head (Cohere 0.0625; PaLM d_model**-0.5)
    # Weight of the logit z-loss: the training loss adds coef * mean_t logsumexp(logits_t)^2 over
    # the cross-entropy's targets (PaLM section 5, 1e-4; t5x losses.py `cross_entropy_with_logits`).
    logit_z_loss_coef: float = 0.0

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
    sliding_window: int | None = None  # W: keys k with q - W < k <= q (spec/MATH.md, "Masks")
    attn_chunk_size: int | None = None  # C: keys k <= q with k // C == q // C (Llama 4)
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
    alibi_slopes: AlibiSlopes = "press"  # the rule for head counts that are not a power of two

    # --- MLP --------------------------------------------------------------------------
    mlp: MlpKind
    activation: Activation
    mlp_bias: bool = False
    # Per-layer MLP kinds, repeated like attn_pattern; "moe" layers follow `moe`.
    mlp_pattern: tuple[MlpLayerKind, ...] = ("dense",)
    moe: MoEConfig | None = None

    # --- block ------------------------------------------------------------------------
    # Parallel: x + attn(n1(x)) + mlp(n2(x)) (GPT-J, NeoX, PaLM); with shared_attn_norm, n2 = n1.
    parallel_residual: bool = False
    shared_attn_norm: bool = False

    # --- images -----------------------------------------------------------------------
    vision: VisionConfig | None = None  # LLaVA: a vision tower whose features replace image tokens

    def __post_init__(self) -> None:
        from lmref.spec.validation import validate

        validate(self)

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
        return expand_pattern(self.attn_pattern, self.n_layers)

    @property
    def layer_mlp_kinds(self) -> tuple[MlpLayerKind, ...]:
        return expand_pattern(self.mlp_pattern, self.n_layers)

    @property
    def expert_d_ff(self) -> int:
        """A routed expert's hidden width (the dense d_ff unless `moe.d_ff` sets its own)."""
        return self.moe.d_ff if self.moe is not None and self.moe.d_ff is not None else self.d_ff

    @property
    def shared_expert_d_ff(self) -> int:
        """The shared expert's hidden width; 0 without one."""
        if self.moe is None or self.moe.n_shared_experts == 0:
            return 0
        return self.moe.shared_d_ff or self.moe.n_shared_experts * self.expert_d_ff

    # --- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config a JSON object describes (what `to_dict` wrote); ConfigError, naming the
        field and the rule, for anything else."""
        values = _checked_fields(cls, data, "config")
        for key in ("attn_pattern", "mlp_pattern"):
            if isinstance(values.get(key), list):  # JSON arrays back to tuples; anything else is refused
                values[key] = tuple(values[key])
        for key, sub in SUBCONFIGS.items():
            if values.get(key) is not None:
                values[key] = _subconfig_from_dict(sub, key, values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelConfig:
        """`from_dict` of JSON text; text that is not JSON is a ConfigError too."""
        if not isinstance(text, str | bytes | bytearray):
            raise ConfigError(f"config: expected JSON text, got {type(text).__name__}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as error:  # JSONDecodeError, an int past Python's
            raise ConfigError(f"config: not valid JSON: {error}") from None  # digit limit, deep nesting
        return cls.from_dict(data)


def expand_pattern(pattern: tuple, n_layers: int) -> tuple:
    """A per-layer pattern repeated cyclically over `n_layers` and truncated: a tuple of
    `n_layers` entries (validation never expands a pattern, so that a config of any depth is
    built and checked in constant time and memory)."""
    return tuple(pattern[i % len(pattern)] for i in range(n_layers))


def _checked_fields(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """`data` as keyword arguments of `cls`, or ConfigError naming unknown or missing fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a JSON object, got {type(data).__name__}")
    fields = dataclasses.fields(cls)
    unknown = sorted((key if isinstance(key, str) else repr(key)) for key in set(data) - {f.name for f in fields})
    if unknown:
        raise ConfigError(f"unknown {what} field(s): {', '.join(unknown)}")
    required = {f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"missing required {what} field(s): {', '.join(missing)}")
    return dict(data)


def _subconfig_from_dict(cls: type, key: str, data: dict[str, Any]):
    values = _checked_fields(cls, data, key)
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)  # JSON arrays back to the tuples of the schema
    return cls(**values)
