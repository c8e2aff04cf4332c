"""The feature vocabulary: one name for each piece of math a backend may or may not compute.

Every backend (numpy, torch, jax, onnx, hf) declares the set of these names it implements.
A config needs the features `required_features(config)` lists; a backend given a config
that needs one it lacks raises `UnsupportedFeature` naming it, which the conformance suite
reports as NOT SUPPORTED (it is a NotImplementedError).  So a feature can land in the golden
before the twins, and no backend ever runs a config with a knob silently ignored.

Each feature names the config fields it reads; tests/test_features.py checks that every field
of ModelConfig is read by some feature (or is a size or a label), and that every backend
declares names from this vocabulary only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lmref.spec.config import ModelConfig


@dataclass(frozen=True)
class Feature:
    name: str
    fields: tuple[str, ...]  # the config fields whose value it gives meaning to
    needed: Callable[[ModelConfig], bool]
    doc: str


def _rope(c: ModelConfig) -> bool:
    return c.position == "rope"


def _scaling(kind: str) -> Callable[[ModelConfig], bool]:
    return lambda c: c.rope_scaling is not None and c.rope_scaling.kind == kind


def _moe(test: Callable) -> Callable[[ModelConfig], bool]:
    return lambda c: c.moe is not None and test(c.moe)


_FEATURES = [
    # --- positions -------------------------------------------------------------------------
    Feature("positions.learned", ("position", "max_seq_len"), lambda c: c.position == "learned",
            "a learned absolute position table (GPT-2)"),
    Feature("positions.rope", ("position", "rope_theta"), _rope, "rotary position embedding (Su et al. 2021)"),
    Feature("positions.alibi", ("position", "alibi_max_bias"), lambda c: c.position == "alibi",
            "ALiBi score biases (Press et al. 2022)"),
    Feature("positions.alibi.geometric", ("alibi_slopes",),
            lambda c: c.position == "alibi" and c.alibi_slopes == "geometric",
            "ALiBi slopes 2^(-max_bias * h / n) for every head count (AI2's OLMo)"),
    Feature("positions.none", ("position",), lambda c: c.position == "none", "no position information at all"),
    Feature("rope.interleaved", ("rope_layout",), lambda c: _rope(c) and c.rope_layout == "interleaved",
            "RoPE on pairs (2i, 2i+1) (GPT-J, Meta's original LLaMA)"),
    Feature("rope.partial", ("rope_fraction",), lambda c: _rope(c) and c.rope_dim < c.head_dim,
            "RoPE on the first rope_fraction of each head (GPT-NeoX, Phi)"),
    Feature("rope.scaling.linear", ("rope_scaling",), _scaling("linear"), "position interpolation"),
    Feature("rope.scaling.llama3", ("rope_scaling",), _scaling("llama3"), "Llama 3.1's frequency scaling"),
    Feature("rope.scaling.dynamic", ("rope_scaling",), _scaling("dynamic"), "dynamic NTK scaling"),
    Feature("rope.scaling.yarn", ("rope_scaling",), _scaling("yarn"), "YaRN"),
    Feature("rope.scaling.longrope", ("rope_scaling",), _scaling("longrope"), "LongRoPE (Phi-3 128k)"),
    Feature("rope.local_theta", ("rope_theta_local",), lambda c: c.rope_theta_local is not None,
            "sliding layers rotate with their own theta (Gemma 3)"),
    # --- embeddings ----------------------------------------------------------------------
    Feature("embedding.scale", ("embedding_scale",), lambda c: c.embedding_scale != "none",
            "embeddings multiplied by sqrt(d_model) (Gemma)"),
    Feature("embedding.norm", ("embedding_norm",), lambda c: c.embedding_norm,
            "a norm right after the token embedding (BLOOM)"),
    # --- norms ----------------------------------------------------------------------------
    Feature("norm.layernorm", ("norm", "norm_eps"), lambda c: c.norm == "layernorm", "LayerNorm"),
    Feature("norm.rmsnorm", ("norm", "norm_eps"), lambda c: c.norm == "rmsnorm", "RMSNorm"),
    Feature("norm.without_weight", ("norm_weight",), lambda c: not c.norm_weight,
            "a norm without a learned scale (OLMo 1)"),
    Feature("norm.bias", ("norm_bias",), lambda c: c.norm_bias, "a LayerNorm bias"),
    Feature("norm.unit_offset", ("norm_unit_offset",), lambda c: c.norm_unit_offset,
            "norm weights applied as (1 + w) (Gemma)"),
    # --- blocks ---------------------------------------------------------------------------
    Feature("block.pre_norm", ("norm_placement",), lambda c: c.norm_placement == "pre",
            "x + f(norm(x)) (GPT-2, LLaMA)"),
    Feature("block.sandwich_norm", ("norm_placement",), lambda c: c.norm_placement == "sandwich",
            "x + post_norm(f(pre_norm(x))) (Gemma 2/3)"),
    Feature("block.post_sublayer_norm", ("norm_placement",), lambda c: c.norm_placement == "post_sublayer",
            "x + norm(f(x)) (OLMo 2)"),
    Feature("block.parallel", ("parallel_residual",), lambda c: c.parallel_residual,
            "x + attn(n1(x)) + mlp(n2(x)) (GPT-J, NeoX, PaLM)"),
    Feature("block.shared_norm", ("shared_attn_norm",), lambda c: c.shared_attn_norm,
            "one norm feeds both branches of a parallel block"),
    # --- attention ------------------------------------------------------------------------
    Feature("attn.qkv_bias", ("qkv_bias",), lambda c: c.qkv_bias, "biases on q, k, v"),
    Feature("attn.out_bias", ("attn_out_bias",), lambda c: c.attn_out_bias, "a bias on the output projection"),
    Feature("attn.qkv_clip", ("qkv_clip",), lambda c: c.qkv_clip is not None, "q, k, v clamped (OLMo, DBRX)"),
    Feature("attn.qk_norm.per_head", ("qk_norm",), lambda c: c.qk_norm == "per_head", "RMSNorm of each q/k head"),
    Feature("attn.qk_norm.per_projection", ("qk_norm",), lambda c: c.qk_norm == "per_projection",
            "RMSNorm of the whole q/k projection (OLMo 2)"),
    Feature("attn.qk_norm.l2", ("qk_norm",), lambda c: c.qk_norm == "l2", "weightless L2 q/k norm (Llama 4)"),
    Feature("attn.query_scale", ("query_scale_dim",), lambda c: c.query_scale_dim is not None,
            "scores scaled by query_scale_dim^-0.5 instead of head_dim^-0.5 (Gemma 2)"),
    Feature("attn.softcap", ("attn_softcap",), lambda c: c.attn_softcap is not None,
            "scores = c tanh(scores / c) (Gemma 2)"),
    Feature("attn.sliding", ("attn_pattern", "sliding_window"), lambda c: "sliding" in c.layer_attn_kinds,
            "sliding-window layers, keys q - W < k <= q (Mistral, Gemma 2/3)"),
    Feature("attn.chunked", ("attn_pattern", "attn_chunk_size"), lambda c: "chunked" in c.layer_attn_kinds,
            "chunked layers, keys k <= q in q's chunk (Llama 4)"),
    Feature("attn.nope_layers", ("attn_pattern",), lambda c: "global_nope" in c.layer_attn_kinds,
            "global layers without RoPE in a RoPE model (Llama 4)"),
    Feature("attn.temperature", ("attn_temperature_floor", "attn_temperature_scale"),
            lambda c: c.attn_temperature_floor is not None, "Llama 4's query temperature on NoPE layers"),
    # --- MLP ------------------------------------------------------------------------------
    Feature("mlp.plain", ("mlp", "d_ff"), lambda c: c.mlp == "plain", "down(act(up(x)))"),
    Feature("mlp.gated", ("mlp", "d_ff"), lambda c: c.mlp == "gated", "down(act(gate(x)) * up(x))"),
    Feature("mlp.bias", ("mlp_bias",), lambda c: c.mlp_bias, "biases in the MLP"),
    Feature("activation.gelu", ("activation",), lambda c: c.activation == "gelu", "exact (erf) GELU"),
    Feature("activation.gelu_tanh", ("activation",), lambda c: c.activation == "gelu_tanh", "tanh GELU"),
    Feature("activation.gelu_tanh_truncated", ("activation",), lambda c: c.activation == "gelu_tanh_truncated",
            "tanh GELU with sqrt(2/pi) written 0.79788456 (BLOOM)"),
    Feature("activation.silu", ("activation",), lambda c: c.activation == "silu", "SiLU"),
    Feature("activation.relu", ("activation",), lambda c: c.activation == "relu", "ReLU"),
    Feature("activation.quick_gelu", ("activation",), lambda c: c.activation == "quick_gelu",
            "x sigmoid(1.702 x) (CLIP)"),
    Feature("moe.softmax_topk", ("mlp_pattern", "moe"), _moe(lambda m: m.router == "softmax_topk"),
            "softmax over the experts, then top-k (Mixtral)"),
    Feature("moe.sigmoid_topk", ("moe",), _moe(lambda m: m.router == "sigmoid_topk"),
            "top-k of the raw logits, sigmoid of the chosen (Llama 4)"),
    Feature("moe.no_renormalize", ("moe",), _moe(lambda m: not m.renormalize),
            "top-k weights not renormalised (Qwen1.5-MoE)"),
    Feature("moe.scales_input", ("moe",), _moe(lambda m: m.router_scales_input),
            "the router weight scales the expert input (Llama 4)"),
    Feature("moe.shared_expert", ("moe",), _moe(lambda m: m.n_shared_experts > 0), "shared experts"),
    Feature("moe.shared_expert_gate", ("moe",), _moe(lambda m: m.shared_expert_gate),
            "a sigmoid gate on the shared expert (Qwen2-MoE)"),
    Feature("moe.aux_loss", ("moe",), _moe(lambda m: m.aux_loss_coef > 0 and m.aux_loss == "pooled"),
            "the load-balancing loss over every MoE layer's rows together (transformers)"),
    Feature("moe.aux_loss_per_layer", ("moe",), _moe(lambda m: m.aux_loss_coef > 0 and m.aux_loss == "per_layer"),
            "the load-balancing loss averaged over the MoE layers (MegaBlocks: DBRX, OLMoE)"),
    Feature("moe.router_z_loss", ("moe",), _moe(lambda m: m.router_z_loss_coef > 0),
            "the router z-loss (OLMoE)"),
    # --- head -----------------------------------------------------------------------------
    Feature("head.tied", ("tie_embeddings",), lambda c: c.tie_embeddings, "head weight = token embedding"),
    Feature("head.bias", ("lm_head_bias",), lambda c: c.lm_head_bias, "a bias on the head"),
    Feature("head.softcap", ("final_logit_softcap",), lambda c: c.final_logit_softcap is not None,
            "logits = c tanh(logits / c) (Gemma 2)"),
    Feature("head.logit_scale", ("logit_scale",), lambda c: c.logit_scale != 1.0,
            "logits multiplied (Cohere, PaLM)"),
    # --- images ---------------------------------------------------------------------------
    Feature("vision", ("vision",), lambda c: c.vision is not None,
            "a LLaVA-style image pathway: a CLIP ViT tower, a projector, image tokens replaced by its features"),
    # --- training objective ---------------------------------------------------------------
    Feature("loss.logit_z_loss", ("logit_z_loss_coef",), lambda c: c.logit_z_loss_coef > 0,
            "the logit z-loss, coef * mean logsumexp(logits)^2 (PaLM)"),
]

FEATURES: dict[str, Feature] = {f.name: f for f in _FEATURES}
assert len(FEATURES) == len(_FEATURES), "a feature name is defined twice"

# What every backend computes (numpy, torch, jax and the ONNX export; Hugging Face per model
# type, convert/features.py).  A backend declares CORE plus what it computes ahead of the
# others: a feature lands in the golden first, then in the twins, and moves into CORE once
# every backend has it.
# What Gemma 1/2/3, Qwen 3 and OLMo 2 brought (issue 11); the twins' tests check each by name.
GEMMA_QWEN3_OLMO2 = (
    "embedding.scale", "norm.unit_offset", "block.sandwich_norm", "block.post_sublayer_norm",
    "attn.qk_norm.per_head", "attn.qk_norm.per_projection", "attn.query_scale", "attn.softcap",
    "rope.local_theta", "head.softcap",
)
# The auxiliary losses of a mixture of experts (issue 12).
MOE_OBJECTIVE = ("moe.aux_loss", "moe.aux_loss_per_layer", "moe.router_z_loss")
# What only the training loss computes (a mixture's auxiliary losses, PaLM's logit z-loss): a
# forward, a decode or a capture never needs them, so a backend without them runs those and
# refuses `loss`.
OBJECTIVE = (*MOE_OBJECTIVE, "loss.logit_z_loss")
# Mixtures of experts (issue 12): routing kinds, weights, shared experts, the auxiliary losses.
MOE = (
    "moe.softmax_topk", "moe.sigmoid_topk", "moe.no_renormalize", "moe.scales_input", "moe.shared_expert",
    "moe.shared_expert_gate", *MOE_OBJECTIVE,
)
# PaLM (issue 13): the logits multiplied by a constant after the head, and the logit z-loss.
PALM = ("head.logit_scale", "loss.logit_z_loss")
# Llama 4's attention (issue 12): the weightless QK norm after the RoPE, the NoPE layers' temperature.
# numpy, torch and jax compute both (the ONNX export through torch), tested on the tiny Llama 4
# presets; they join CORE once tests/strategies.py draws them for the property tests.
LLAMA4 = ("attn.qk_norm.l2", "attn.temperature")
# LLaVA (issue 14): the image pathway.  It lands in the golden first; each backend declares it
# once it passes the multimodal golden cases.
VISION = ("vision",)
CORE = (
    "positions.learned", "positions.rope", "positions.alibi", "positions.alibi.geometric", "positions.none",
    "embedding.norm",
    "rope.interleaved", "rope.partial", "rope.scaling.linear", "rope.scaling.llama3", "rope.scaling.longrope",
    "norm.layernorm", "norm.rmsnorm", "norm.without_weight", "norm.bias",
    "block.pre_norm", "block.parallel", "block.shared_norm",
    "attn.qkv_bias", "attn.out_bias", "attn.qkv_clip", "attn.sliding", "attn.chunked", "attn.nope_layers",
    "mlp.plain", "mlp.gated", "mlp.bias",
    "activation.gelu", "activation.gelu_tanh", "activation.gelu_tanh_truncated", "activation.silu",
    "activation.relu", "activation.quick_gelu", "head.tied", "head.bias",
    *GEMMA_QWEN3_OLMO2, *MOE, *PALM,
)
assert set(CORE) <= set(FEATURES), f"CORE names unknown features {set(CORE) - set(FEATURES)}"

# Fields that say how big a model is or what it is called, not what it computes.
SIZE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len")
LABEL_FIELDS = ("name", "hf_model_type")


class UnsupportedFeature(NotImplementedError):
    """A backend was given a config that needs features it does not implement (NOT SUPPORTED).
    `missing` holds their names."""

    missing: tuple[str, ...] = ()


def required_features(config: ModelConfig) -> frozenset[str]:
    """The features computing `config` takes."""
    return frozenset(name for name, f in FEATURES.items() if f.needed(config))


def missing_features(config: ModelConfig, implemented: frozenset[str]) -> list[str]:
    """The features `config` needs that `implemented` lacks, in vocabulary order."""
    needed = required_features(config)
    return [name for name in FEATURES if name in needed and name not in implemented]


def check_supported(config: ModelConfig, backend: str, implemented: frozenset[str]) -> None:
    """Raise UnsupportedFeature naming every feature of `config` that `backend` lacks."""
    missing = missing_features(config, implemented)
    if missing:
        described = "; ".join(f"{name} ({FEATURES[name].doc}; field {', '.join(FEATURES[name].fields)})"
                              for name in missing)
        error = UnsupportedFeature(f"the {backend} backend does not implement feature(s) of config "
                                   f"{config.name!r}: {described}")
        error.missing = tuple(missing)
        raise error


def declare(*names: str) -> frozenset[str]:
    """A backend's feature set, checked against the vocabulary when the backend is imported."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise KeyError(f"unknown feature name(s) {unknown}; the vocabulary is spec/features.py")
    return frozenset(names)
