"""Mixtral (`MixtralForCausalLM`, transformers models/mixtral, 5.23) <-> lmref.

Mistral's block (convert/models/mistral.py: no biases, a window on every layer or none) with
every MLP a mixture of `num_local_experts` SwiGLU experts, `num_experts_per_tok` chosen per
token and their softmax weights renormalised (`MixtralTopKRouter`), each expert
`intermediate_size` wide.  `MixtralConfig.sliding_window` defaults to null, its
`default_theta` is 1e6, and its `head_dim` null means hidden_size // heads (written only
where it differs, as the Hub's files do).

Checkpoint keys, as on the Hub and as `save_pretrained` writes them (it reverts 5.x's fused
in-memory `mlp.experts.gate_up_proj` [E, 2f, d] to these, `conversion_mapping.py` "mixtral"):
LLaMA's attention and norms, `model.layers.{i}.block_sparse_moe.gate.weight` [E, d] and
`model.layers.{i}.block_sparse_moe.experts.{e}.{w1, w3, w2}.weight` (gate [f, d], up [f, d],
down [d, f]).
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layout import Entry, same
from lmref.convert.models import llama, qwen2
from lmref.convert.moe import (
    MOE_FEATURES, MOE_IGNORED, MOE_LAYER_MODULES, MOE_MAPPED, OBJECTIVE_FIELDS, every_layer_rule, expert_entries,
    moe_rules, objective_from_hf, objective_to_hf,
)
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.features import declare

MODEL_TYPE = "mixtral"
ARCHITECTURE = "MixtralForCausalLM"
PREFIX = "model."  # MixtralPreTrainedModel.base_model_prefix

# MixtralForCausalLM: Mistral's attention and window, renormalised top-k routing.
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.pre_norm", "attn.sliding", "mlp.gated", *ACTIVATION_FEATURES,
    "head.tied", *MOE_FEATURES,
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = MOE_LAYER_MODULES
IGNORED = MOE_IGNORED | {"attention_dropout"}  # off in eval

# MixtralConfig's class defaults where they differ from LlamaConfig's (configuration_mixtral.py).
DEFAULTS = llama.DEFAULTS | dict(intermediate_size=14336, max_position_embeddings=4096 * 32, num_key_value_heads=8,
                                 rope_theta=1e6)
DEFAULT_EXPERTS, DEFAULT_K, DEFAULT_AUX = 8, 2, 0.001  # num_local_experts, num_experts_per_tok, router_aux_loss_coef


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """MixtralConfig fields (defaults: the MixtralConfig class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    window = cfg.optional_positive_integer("sliding_window")
    moe = MoEConfig(n_experts=cfg.positive_either(("num_local_experts", "num_experts"), DEFAULT_EXPERTS),
                    n_experts_per_token=cfg.positive_integer("num_experts_per_tok", DEFAULT_K),
                    **objective_from_hf(cfg, cfg.number("router_aux_loss_coef", DEFAULT_AUX)))
    return ModelConfig(
        **fields,
        head_dim=llama.head_dim(cfg, fields),
        attn_pattern=("global",) if window is None else ("sliding",), sliding_window=window,
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-5),
        mlp="gated", activation=cfg.activation("hidden_act", "silu"), mlp_pattern=("moe",), moe=moe,
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> MixtralConfig fields; ConversionError if Mixtral cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | MOE_MAPPED | {"head_dim", "norm_eps", "attn_pattern", "sliding_window"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated"},
        rules=[activation_rule(c), rope_scaling_rule(c), every_layer_rule(c, MODEL_TYPE),
               ("attn_pattern", set(c.attn_pattern) <= {"global"} or set(c.attn_pattern) == {"sliding"},
                f"Mixtral's window is on every layer or on none, got attn_pattern={c.attn_pattern}"),
               *moe_rules(c, MODEL_TYPE, {"n_experts", "n_experts_per_token", *OBJECTIVE_FIELDS})],
    )
    return llama.llama_style_hf_fields(c) | qwen2.head_dim_hf_fields(c) | {
        "rms_norm_eps": c.norm_eps, "sliding_window": c.sliding_window,
        "num_local_experts": c.moe.n_experts, "num_experts_per_tok": c.moe.n_experts_per_token,
        "router_aux_loss_coef": c.moe.aux_loss_coef, **objective_to_hf(c.moe),
    }


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's attention and norms; each layer's router and experts (w1 gate, w3 up, w2 down)."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        h = f"model.layers.{i}"
        table += [same(f"{h}.input_layernorm.weight", f"layers.{i}.attn_norm.weight"),
                  same(f"{h}.post_attention_layernorm.weight", f"layers.{i}.mlp_norm.weight")]
        table += llama.attention_entries(c, i)
        table += expert_entries(c, i, f"{h}.block_sparse_moe.gate", f"{h}.block_sparse_moe.experts", ("w1", "w3", "w2"))
    return table + [same("model.norm.weight", "final_norm.weight")] + llama.head_entries(c)
