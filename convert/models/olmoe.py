"""OLMoE (`OlmoeForCausalLM`, transformers models/olmoe, 5.23; allenai/OLMoE-1B-7B-0924) <-> lmref.

OLMo 2's whole-projection QK norm on LLaMA's pre-norm block (`OlmoeAttention`: q_norm over
[hidden_size], k_norm over [kv heads * head_dim], before the RoPE; `attention_bias` on q, k, v
and o together; head_dim is hidden_size // heads) with every MLP a mixture of `num_experts`
SwiGLU experts of width `intermediate_size`, `num_experts_per_tok` chosen, their softmax
weights renormalised iff `norm_topk_prob` (`OlmoeSparseMoeBlock`).

`clip_qkv` is not converted, either way: transformers clamps q, k, v after q_norm / k_norm
(`OlmoeAttention.forward`), while AI2's code (olmo-core, the original OLMo code) clamps right
after the projections and then normalises, as lmref's golden does
(../shared/reference/hf_measured.md).  A file that sets it means two different models, and
an lmref config with `qkv_clip` has no transformers olmoe that computes it.  The released
configs set none.

Checkpoint keys: LLaMA's attention and norms with `self_attn.q_norm`, `self_attn.k_norm`,
`model.layers.{i}.mlp.gate.weight`, `mlp.experts.{e}.{gate,up,down}_proj.weight` (the Hub's
names; `save_pretrained` writes them back from 5.x's fused `mlp.experts.gate_up_proj`).
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layout import Entry, same
from lmref.convert.models import llama
from lmref.convert.moe import (
    MOE_FEATURES, MOE_IGNORED, MOE_LAYER_MODULES, MOE_MAPPED, OBJECTIVE_FIELDS, every_layer_rule, expert_entries,
    moe_rules, objective_from_hf, objective_to_hf,
)
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.features import declare

MODEL_TYPE = "olmoe"
ARCHITECTURE = "OlmoeForCausalLM"
PREFIX = "model."  # OlmoePreTrainedModel.base_model_prefix

# OlmoeForCausalLM: a whole-projection QK norm, attention_bias, top-k routing renormalised or
# not; no attn.qkv_clip (its clamp comes after the QK norm, see above).
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.pre_norm", "attn.qkv_bias", "attn.out_bias", "attn.qk_norm.per_projection",
    "mlp.gated", *ACTIVATION_FEATURES, "head.tied", *MOE_FEATURES, "moe.no_renormalize",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = MOE_LAYER_MODULES
IGNORED = MOE_IGNORED | {"attention_dropout"}  # off in eval
CLIP_ORDER = ("transformers' OlmoeAttention clamps q, k and v after q_norm / k_norm, AI2's OLMoE code (and "
              "lmref) before them: the two compute different models")

# OlmoeConfig's class defaults (configuration_olmoe.py).
DEFAULTS = llama.DEFAULTS | dict(vocab_size=50304, hidden_size=2048, intermediate_size=2048, num_hidden_layers=16,
                                 num_attention_heads=16, max_position_embeddings=4096)
MOE_DEFAULTS = dict(num_experts=64, num_experts_per_tok=8, router_aux_loss_coef=0.01)


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """OlmoeConfig fields (defaults: the OlmoeConfig class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    head_dim = fields["d_model"] // fields["n_heads"]
    # OlmoeConfig has no head_dim field, and q_norm is hidden_size wide
    cfg.require("head_dim", None, (None, head_dim), "OLMoE's head_dim is hidden_size // num_attention_heads")
    cfg.require("clip_qkv", None, (None,), CLIP_ORDER)
    bias = cfg.flag("attention_bias", False)  # OlmoeAttention: bias on q, k, v and o together
    moe = MoEConfig(n_experts=cfg.positive_either(("num_experts", "num_local_experts"), MOE_DEFAULTS["num_experts"]),
                    n_experts_per_token=cfg.positive_integer("num_experts_per_tok",
                                                             MOE_DEFAULTS["num_experts_per_tok"]),
                    renormalize=cfg.flag("norm_topk_prob", False),
                    **objective_from_hf(cfg, cfg.number("router_aux_loss_coef", MOE_DEFAULTS["router_aux_loss_coef"])))
    return ModelConfig(
        **fields, head_dim=head_dim, norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-5),
        qk_norm="per_projection", qkv_bias=bias, attn_out_bias=bias,
        mlp="gated", activation=cfg.activation("hidden_act", "silu"), mlp_pattern=("moe",), moe=moe,
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> OlmoeConfig fields; ConversionError if OLMoE cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | MOE_MAPPED | {"head_dim", "norm_eps", "qkv_bias", "attn_out_bias",
                                                        "qkv_clip"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated", "qk_norm": "per_projection"},
        rules=[llama.attention_bias_rule(c), activation_rule(c), rope_scaling_rule(c), every_layer_rule(c, MODEL_TYPE),
               ("head_dim", c.head_dim * c.n_heads == c.d_model, "OLMoE derives head_dim = d_model / n_heads"),
               ("qkv_clip", c.qkv_clip is None, CLIP_ORDER),
               *moe_rules(c, MODEL_TYPE, {"n_experts", "n_experts_per_token", "renormalize", *OBJECTIVE_FIELDS})],
    )
    m = c.moe
    return llama.llama_style_hf_fields(c) | {
        "rms_norm_eps": c.norm_eps, "attention_bias": c.qkv_bias, "clip_qkv": None, "pad_token_id": None,
        "num_experts": m.n_experts, "num_experts_per_tok": m.n_experts_per_token, "norm_topk_prob": m.renormalize,
        "router_aux_loss_coef": m.aux_loss_coef, **objective_to_hf(m),
    }


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's attention with the two QK norms, and norms; each layer's router and experts."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        h = f"model.layers.{i}"
        table += [same(f"{h}.input_layernorm.weight", f"layers.{i}.attn_norm.weight"),
                  same(f"{h}.post_attention_layernorm.weight", f"layers.{i}.mlp_norm.weight")]
        table += llama.attention_entries(c, i) + llama.qk_norm_entries(c, i)
        table += expert_entries(c, i, f"{h}.mlp.gate", f"{h}.mlp.experts", ("gate_proj", "up_proj", "down_proj"))
    return table + [same("model.norm.weight", "final_norm.weight")] + llama.head_entries(c)
