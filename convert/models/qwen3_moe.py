"""Qwen3-MoE (`Qwen3MoeForCausalLM`, transformers models/qwen3_moe, 5.23) <-> lmref.

Qwen3's attention (convert/models/qwen3.py: `attention_bias` on q, k, v and o together, a
per-head RMSNorm of q and k before the RoPE, `head_dim` read when the file has one) with
Qwen2-MoE's mixture layers and layer rule (convert/models/qwen2_moe.py) without the shared
expert (`Qwen3MoeSparseMoeBlock`).  The window is on every layer or on none:
`Qwen3MoeModel.forward` builds one mask for all layers, sliding iff `use_sliding_window`
(`Qwen3MoeConfig.__post_init__` drops `sliding_window` otherwise); `max_window_layers` and
`layer_types` are no fields of the class.  `Qwen3MoeConfig` saves `num_experts` as
`num_local_experts` (its attribute_map); the Hub's files say `num_experts`.

Checkpoint keys: Qwen3's attention (with q_norm, k_norm) and norms,
`model.layers.{i}.mlp.gate.weight`, `mlp.experts.{e}.{gate,up,down}_proj.weight`; a dense
layer's `mlp.{gate,up,down}_proj.weight`.
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layout import Entry, same
from lmref.convert.models import llama, qwen2
from lmref.convert.moe import (
    MOE_FEATURES, MOE_IGNORED, MOE_LAYER_MODULES, MOE_MAPPED, OBJECTIVE_FIELDS, expert_entries, moe_rules,
    objective_from_hf, objective_to_hf, own_width, sparse_hf_fields, sparse_pattern,
)
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.features import declare

MODEL_TYPE = "qwen3_moe"
ARCHITECTURE = "Qwen3MoeForCausalLM"
PREFIX = "model."  # Qwen3MoePreTrainedModel.base_model_prefix

# Qwen3MoeForCausalLM: Qwen3's attention, a window on every layer or none, top-k routing
# renormalised or not.
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.pre_norm", "attn.qkv_bias", "attn.out_bias", "attn.qk_norm.per_head",
    "attn.sliding", "mlp.gated", *ACTIVATION_FEATURES, "head.tied", *MOE_FEATURES, "moe.no_renormalize",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = MOE_LAYER_MODULES
IGNORED = MOE_IGNORED | {
    "attention_dropout",  # off in eval
    "max_window_layers",  # the Hub's files carry it; Qwen3MoeConfig has no such field and nothing reads it
}

# Qwen3MoeConfig's class defaults (configuration_qwen3_moe.py).
DEFAULTS = llama.DEFAULTS | dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=32768)
MOE_DEFAULTS = dict(num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, router_aux_loss_coef=0.001)


def moe_config(cfg: HFConfig, d_ff: int) -> MoEConfig:
    """The mixture layers' MoEConfig; an expert width equal to the dense one is None."""
    width = cfg.positive_integer("moe_intermediate_size", MOE_DEFAULTS["moe_intermediate_size"])
    return MoEConfig(n_experts=cfg.positive_either(("num_experts", "num_local_experts"), MOE_DEFAULTS["num_experts"]),
                     n_experts_per_token=cfg.positive_integer("num_experts_per_tok",
                                                              MOE_DEFAULTS["num_experts_per_tok"]),
                     d_ff=own_width(width, d_ff), renormalize=cfg.flag("norm_topk_prob", False),
                     **objective_from_hf(cfg, cfg.number("router_aux_loss_coef", MOE_DEFAULTS["router_aux_loss_coef"])))


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Qwen3MoeConfig fields (defaults: the Qwen3MoeConfig class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    window = qwen2.used_window(cfg)
    bias = cfg.flag("attention_bias", False)  # Qwen3MoeAttention: bias on q, k, v and o together
    moe = moe_config(cfg, fields["d_ff"])
    return ModelConfig(
        **fields, head_dim=llama.head_dim(cfg, fields),
        attn_pattern=("global",) if window is None else ("sliding",), sliding_window=window,
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-6), qk_norm="per_head",
        qkv_bias=bias, attn_out_bias=bias, mlp="gated", activation=cfg.activation("hidden_act", "silu"),
        mlp_pattern=sparse_pattern(cfg, fields["n_layers"], moe.n_experts), moe=moe,
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Qwen3MoeConfig fields; ConversionError if Qwen3-MoE cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | MOE_MAPPED | {"head_dim", "norm_eps", "qkv_bias", "attn_out_bias",
                                                        "attn_pattern", "sliding_window"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated", "qk_norm": "per_head"},
        rules=[llama.attention_bias_rule(c), activation_rule(c), rope_scaling_rule(c),
               ("attn_pattern", set(c.attn_pattern) <= {"global"} or set(c.attn_pattern) == {"sliding"},
                f"Qwen3-MoE's window is on every layer or on none, got attn_pattern={c.attn_pattern}"),
               *moe_rules(c, MODEL_TYPE, {"n_experts", "n_experts_per_token", "renormalize", "d_ff",
                                          *OBJECTIVE_FIELDS})],
    )
    m = c.moe
    return llama.llama_style_hf_fields(c) | qwen2.head_dim_hf_fields(c) | sparse_hf_fields(c) | {
        "rms_norm_eps": c.norm_eps, "attention_bias": c.qkv_bias,
        "use_sliding_window": c.sliding_window is not None, "sliding_window": c.sliding_window,
        "num_experts": m.n_experts, "num_experts_per_tok": m.n_experts_per_token, "norm_topk_prob": m.renormalize,
        "moe_intermediate_size": c.expert_d_ff, "router_aux_loss_coef": m.aux_loss_coef, **objective_to_hf(m),
    }


def entries(c: ModelConfig) -> list[Entry]:
    """Qwen3's attention with q_norm, k_norm, and norms; a mixture layer's router and experts,
    or a dense layer's MLP."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i, kind in enumerate(c.layer_mlp_kinds):
        h, p = f"model.layers.{i}", f"layers.{i}"
        table += [same(f"{h}.input_layernorm.weight", f"{p}.attn_norm.weight"),
                  same(f"{h}.post_attention_layernorm.weight", f"{p}.mlp_norm.weight")]
        table += llama.attention_entries(c, i) + llama.qk_norm_entries(c, i)
        if kind == "dense":
            table += llama.mlp_entries(c, i)
        else:
            table += expert_entries(c, i, f"{h}.mlp.gate", f"{h}.mlp.experts", ("gate_proj", "up_proj", "down_proj"))
    return table + [same("model.norm.weight", "final_norm.weight")] + llama.head_entries(c)
