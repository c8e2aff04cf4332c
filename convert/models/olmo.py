"""OLMo 1 (`OlmoForCausalLM`, transformers models/olmo, 5.23; allenai/OLMo-*-hf) <-> lmref.

LLaMA's module names and layout (convert/models/llama.py) with a non-parametric LayerNorm
(`OlmoLayerNorm`: no weight, no bias, eps hard-coded 1e-5), so the checkpoint has no norm
tensors at all, and an optional `clip_qkv` clamp after the q, k, v projections
(transformers `models/olmo/modeling_olmo.py`).
"""

from __future__ import annotations

from lmref.convert.fields import (
    ACTIVATION_FEATURES,
    HFConfig,
    activation_rule,
    check_expressible,
)
from lmref.convert.layout import Entry, same
from lmref.convert.models import llama
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "olmo"
ARCHITECTURE = "OlmoForCausalLM"
PREFIX = "model."  # OlmoPreTrainedModel.base_model_prefix

# OlmoForCausalLM: OlmoLayerNorm without weight or bias, attention_bias, clip_qkv, OlmoMLP
# gated without biases.
FEATURES = declare(
    *ROPE_FEATURES, "norm.layernorm", "norm.without_weight", "block.pre_norm",
    "attn.qkv_bias", "attn.out_bias", "attn.qkv_clip", "mlp.gated", *ACTIVATION_FEATURES, "head.tied",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = llama.LAYER_MODULES  # LLaMA's module names
OLMO_NORM_EPS = 1e-5  # OlmoLayerNorm.forward: F.layer_norm(..., eps=1e-5), not a config field

IGNORED = frozenset({"attention_dropout", "pretraining_tp"})  # dropout off in eval; unread (see llama.py)


# OlmoConfig's class defaults where they differ from LlamaConfig's (configuration_olmo.py).
DEFAULTS = llama.DEFAULTS | dict(vocab_size=50304)


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """OlmoConfig fields (defaults: the OlmoConfig class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    # OlmoConfig has no head_dim field, as AI2's code derives it, but OlmoAttention and its rotary
    # embedding read one a config.json has (getattr(config, "head_dim", ...), 4.57 and 5.23)
    head_dim = llama.head_dim(cfg, fields)
    bias = cfg.flag("attention_bias", False)  # OlmoAttention: bias on q, k, v and o together
    return ModelConfig(
        **fields, head_dim=head_dim,
        norm="layernorm", norm_eps=OLMO_NORM_EPS, norm_weight=False,
        qkv_bias=bias, attn_out_bias=bias, qkv_clip=cfg.get("clip_qkv"),
        mlp="gated", activation=cfg.activation("hidden_act", "silu"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> OlmoConfig fields; ConversionError if OLMo cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | {"head_dim", "qkv_bias", "attn_out_bias", "qkv_clip"},
        fixed={"position": "rope", "norm": "layernorm", "norm_weight": False, "norm_eps": OLMO_NORM_EPS,
               "mlp": "gated"},
        rules=[llama.attention_bias_rule(c), activation_rule(c), rope_scaling_rule(c)],
    )
    return llama.llama_style_hf_fields(c) | llama.stated_head_dim(c) | {
        "attention_bias": c.qkv_bias, "clip_qkv": c.qkv_clip, "pad_token_id": None,
    }



def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's tensors without any norm weight (OlmoLayerNorm has none)."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        table += llama.attention_mlp_entries(c, i)
    return table + llama.head_entries(c)
