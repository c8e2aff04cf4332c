"""Qwen1.5-MoE and Qwen2-MoE (`Qwen2MoeForCausalLM`, transformers models/qwen2_moe, 5.23) <-> lmref.

Qwen2's attention (convert/models/qwen2.py: q, k, v biases, switched off by `qkv_bias`, none
on o) with mixture layers (`Qwen2MoeSparseMoeBlock`): `num_experts` SwiGLU experts of width
`moe_intermediate_size`, `num_experts_per_tok` chosen, their softmax weights renormalised iff
`norm_topk_prob`, plus a shared SwiGLU expert of width `shared_expert_intermediate_size`
scaled by sigmoid(x @ `shared_expert_gate`) (always there).  Layer i is a mixture iff it is
not in `mlp_only_layers` and (i + 1) % `decoder_sparse_step` == 0 (convert/moe.py); the other
layers are dense MLPs of width `intermediate_size`.

Sliding layers follow the reverse of Qwen2's rule (`Qwen2MoeConfig.__post_init__`): without
`layer_types`, layer i slides iff `use_sliding_window` and i is even and i < `max_window_layers`.
lmref writes `layer_types`, which 5.x follows; transformers 4.57's eager path slides every layer
when `use_sliding_window` is true, so only a window on every layer or on none means the same
there.  `head_dim` is read like Qwen2's (no class field; the attention's getattr).

Checkpoint keys (the Hub's, which `save_pretrained` writes back from 5.x's fused
`mlp.experts.gate_up_proj`, `conversion_mapping.py` "qwen2_moe"): Qwen2's attention and norms,
`model.layers.{i}.mlp.gate.weight` [E, d], `mlp.experts.{e}.{gate,up,down}_proj.weight`,
`mlp.shared_expert.{gate,up,down}_proj.weight`, `mlp.shared_expert_gate.weight` [1, d]; a dense
layer's `mlp.{gate,up,down}_proj.weight`.
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layer_types import attention_fields, layer_types, layer_types_rule
from lmref.convert.layout import Entry, linear, same
from lmref.convert.models import llama, qwen2
from lmref.convert.moe import (
    MOE_FEATURES, MOE_IGNORED, MOE_LAYER_MODULES, MOE_MAPPED, OBJECTIVE_FIELDS, expert_entries, moe_rules,
    objective_from_hf, objective_to_hf, own_width, sparse_hf_fields, sparse_pattern,
)
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.features import declare

MODEL_TYPE = "qwen2_moe"
ARCHITECTURE = "Qwen2MoeForCausalLM"
PREFIX = "model."  # Qwen2MoePreTrainedModel.base_model_prefix

# Qwen2MoeForCausalLM: Qwen2's attention and sliding layers, top-k routing renormalised or not,
# a gated shared expert.
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.pre_norm", "attn.qkv_bias", "attn.sliding", "mlp.gated",
    *ACTIVATION_FEATURES, "head.tied", *MOE_FEATURES, "moe.no_renormalize", "moe.shared_expert",
    "moe.shared_expert_gate",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = MOE_LAYER_MODULES
IGNORED = MOE_IGNORED | {"attention_dropout"}  # off in eval

# Qwen2MoeConfig's class defaults (configuration_qwen2_moe.py).
DEFAULTS = llama.DEFAULTS | dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                                 num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=32768)
MOE_DEFAULTS = dict(num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
                    shared_expert_intermediate_size=5632, router_aux_loss_coef=0.001)
MOE_FIELDS = {"n_experts", "n_experts_per_token", "renormalize", "d_ff", "n_shared_experts", "shared_d_ff",
              *OBJECTIVE_FIELDS}


def sliding_fields(cfg: HFConfig, n_layers: int) -> dict:
    """`attn_pattern` and `sliding_window` by `Qwen2MoeConfig.__post_init__`'s rule."""
    use, window = cfg.flag("use_sliding_window", False), qwen2.used_window(cfg)
    max_window_layers = qwen2.first_window_layer(cfg)
    types = cfg.get("layer_types")
    if types is None:
        types = ["sliding_attention" if use and i % 2 == 0 and i < max_window_layers else "full_attention"
                 for i in range(n_layers)]
    return attention_fields(cfg, types, window, n_layers)


def moe_config(cfg: HFConfig, d_ff: int) -> MoEConfig:
    """The mixture layers' MoEConfig; widths equal to the ones they default to are None."""
    n_experts = cfg.positive_integer("num_experts", MOE_DEFAULTS["num_experts"])
    width = cfg.positive_integer("moe_intermediate_size", MOE_DEFAULTS["moe_intermediate_size"])
    shared = cfg.checked_positive("shared_expert_intermediate_size", cfg.get(
        "shared_expert_intermediate_size", MOE_DEFAULTS["shared_expert_intermediate_size"]),
        "Qwen2-MoE always adds its gated shared expert")
    return MoEConfig(n_experts=n_experts, n_experts_per_token=cfg.positive_integer("num_experts_per_tok", 4),
                     d_ff=own_width(width, d_ff), renormalize=cfg.flag("norm_topk_prob", False),
                     n_shared_experts=1, shared_d_ff=own_width(shared, width), shared_expert_gate=True,
                     **objective_from_hf(cfg, cfg.number("router_aux_loss_coef", MOE_DEFAULTS["router_aux_loss_coef"])))


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Qwen2MoeConfig fields (defaults: the Qwen2MoeConfig class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    moe = moe_config(cfg, fields["d_ff"])
    return ModelConfig(
        **fields, head_dim=llama.head_dim(cfg, fields), **sliding_fields(cfg, fields["n_layers"]),
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-6), qkv_bias=cfg.flag("qkv_bias", True),
        mlp="gated", activation=cfg.activation("hidden_act", "silu"),
        mlp_pattern=sparse_pattern(cfg, fields["n_layers"], moe.n_experts), moe=moe,
    )


def moe_hf_fields(c: ModelConfig) -> dict:
    """`moe_config`'s inverse and the mixture layers."""
    m = c.moe
    return {"num_experts": m.n_experts, "num_experts_per_tok": m.n_experts_per_token, "norm_topk_prob": m.renormalize,
            "moe_intermediate_size": c.expert_d_ff, "shared_expert_intermediate_size": c.shared_expert_d_ff,
            "router_aux_loss_coef": m.aux_loss_coef, **objective_to_hf(m), **sparse_hf_fields(c)}


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Qwen2MoeConfig fields; ConversionError if Qwen2-MoE cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | MOE_MAPPED | {"head_dim", "norm_eps", "qkv_bias", "attn_pattern",
                                                        "sliding_window"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated"},
        rules=[activation_rule(c), rope_scaling_rule(c), layer_types_rule(c),
               ("moe.n_shared_experts", c.moe is None or c.moe.n_shared_experts > 0,
                "Qwen2-MoE always adds a shared expert (n_shared_experts 0)"),
               *moe_rules(c, MODEL_TYPE, MOE_FIELDS, {"shared_expert_gate": True})],
    )
    kinds = c.layer_attn_kinds
    return llama.llama_style_hf_fields(c) | qwen2.head_dim_hf_fields(c) | moe_hf_fields(c) | {
        "rms_norm_eps": c.norm_eps, "qkv_bias": c.qkv_bias, "use_sliding_window": "sliding" in kinds,
        "sliding_window": c.sliding_window, "layer_types": layer_types(c)}


def entries(c: ModelConfig) -> list[Entry]:
    """Qwen2's attention and norms; a mixture layer's router, experts and gated shared expert,
    or a dense layer's MLP."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i, kind in enumerate(c.layer_mlp_kinds):
        h, p = f"model.layers.{i}", f"layers.{i}"
        table += [same(f"{h}.input_layernorm.weight", f"{p}.attn_norm.weight"),
                  same(f"{h}.post_attention_layernorm.weight", f"{p}.mlp_norm.weight")]
        table += llama.attention_entries(c, i)
        table += llama.mlp_entries(c, i) if kind == "dense" else moe_entries(c, i)
    return table + [same("model.norm.weight", "final_norm.weight")] + llama.head_entries(c)


def moe_entries(c: ModelConfig, i: int) -> list[Entry]:
    """Mixture layer i's router, experts, shared expert and its gate."""
    h, p = f"model.layers.{i}.mlp", f"layers.{i}.mlp"
    table = expert_entries(c, i, f"{h}.gate", f"{h}.experts", ("gate_proj", "up_proj", "down_proj"))
    table += [linear(f"{h}.shared_expert.{name}.weight", f"{p}.shared.{w}")
              for name, w in (("gate_proj", "w_gate"), ("up_proj", "w_up"), ("down_proj", "w_down"))]
    return table + [linear(f"{h}.shared_expert_gate.weight", f"{p}.shared_gate")]  # [d, 1] -> [1, d]
