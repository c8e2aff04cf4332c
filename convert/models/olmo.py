"""OLMo 1 (`OlmoForCausalLM`, transformers models/olmo, 5.23; allenai/OLMo-*-hf) <-> lmref.

LLaMA's module names and layout (convert/llama.py) with a non-parametric LayerNorm
(`OlmoLayerNorm`: no weight, no bias, eps hard-coded 1e-5), so the checkpoint has no norm
tensors at all, and an optional `clip_qkv` clamp after the q, k, v projections
(transformers `models/olmo/modeling_olmo.py`).
"""

from __future__ import annotations

from lmref.convert.fields import (
    ACTIVATION_FEATURES,
    ACTIVATION_TO_HF,
    HFConfig,
    activation_rule,
    check_expressible,
)
from lmref.convert.layout import Entry, same
from lmref.convert.models.llama import (
    attention_bias_rule,
    attention_mlp_entries,
    head_entries,
)
from lmref.convert.rope import (
    ROPE_FEATURES,
    rope_from_hf,
    rope_scaling_rule,
    rope_to_hf,
)
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
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # a non-persistent buffer that old checkpoints stored
LAYER_MODULES = {"attn": "model.layers.{i}.self_attn.o_proj", "mlp": "model.layers.{i}.mlp.down_proj",
                 "out": "model.layers.{i}"}
OLMO_NORM_EPS = 1e-5  # OlmoLayerNorm.forward: F.layer_norm(..., eps=1e-5), not a config field

IGNORED = frozenset({"attention_dropout", "pretraining_tp"})  # dropout off in eval; unread (see llama.py)


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """OlmoConfig fields (defaults: the OlmoConfig class defaults) -> ModelConfig."""
    d, n_heads = cfg.get("hidden_size", 4096), cfg.get("num_attention_heads", 32)
    # OlmoConfig has no head_dim field; OlmoAttention uses hidden_size // num_attention_heads
    cfg.require("head_dim", None, (None, d // n_heads), "OLMo's head_dim is hidden_size // num_attention_heads")
    max_seq_len = cfg.get("max_position_embeddings", 2048)
    theta, scaling = rope_from_hf(cfg, max_seq_len)
    bias = bool(cfg.get("attention_bias", False))  # OlmoAttention: bias on q, k, v and o together
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=cfg.get("vocab_size", 50304), d_model=d,
        n_layers=cfg.get("num_hidden_layers", 32), n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads, head_dim=d // n_heads,
        d_ff=cfg.get("intermediate_size", 11008), max_seq_len=max_seq_len,
        position="rope", rope_theta=theta, rope_scaling=scaling,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        norm="layernorm", norm_eps=OLMO_NORM_EPS, norm_weight=False,
        qkv_bias=bias, attn_out_bias=bias, qkv_clip=cfg.get("clip_qkv"),
        mlp="gated", activation=cfg.activation("hidden_act", "silu"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> OlmoConfig fields; ConversionError if OLMo cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "max_seq_len", "tie_embeddings", "qkv_bias", "attn_out_bias", "qkv_clip", "rope_theta",
                "rope_scaling", "rope_layout", "activation"},
        fixed={"position": "rope", "norm": "layernorm", "norm_weight": False, "norm_eps": OLMO_NORM_EPS,
               "mlp": "gated"},
        rules=[attention_bias_rule(c), activation_rule(c), rope_scaling_rule(c),
               ("head_dim", c.head_dim * c.n_heads == c.d_model, "OLMo derives head_dim = d_model / n_heads")],
    )
    return {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "max_position_embeddings": c.max_seq_len, "hidden_act": ACTIVATION_TO_HF[c.activation],
        "tie_word_embeddings": c.tie_embeddings, "attention_bias": c.qkv_bias, "clip_qkv": c.qkv_clip,
        "rope_parameters": rope_to_hf(c),
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,  # unknown to lmref
    }


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's tensors without any norm weight (OlmoLayerNorm has none)."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        table += attention_mlp_entries(c, i)
    return table + head_entries(c)
