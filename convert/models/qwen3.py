"""Qwen3 (`Qwen3ForCausalLM`, transformers models/qwen3, 5.23) <-> lmref.

Qwen2's config and sliding layers (convert/models/qwen2.py) with three differences
(`Qwen3Attention`): `attention_bias` puts biases on q, k, v *and* o together (all four
`nn.Linear(..., bias=config.attention_bias)`), each query and key head is normalised by an
RMSNorm over head_dim before the RoPE (`q_norm`, `k_norm`, weight [head_dim] shared by the
heads; lmref's `qk_norm="per_head"`), and `head_dim` is a field of its own (default 128).
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layer_types import layer_types_rule
from lmref.convert.layout import Entry
from lmref.convert.models import llama, qwen2
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "qwen3"
ARCHITECTURE = "Qwen3ForCausalLM"
PREFIX = "model."  # Qwen3PreTrainedModel.base_model_prefix

# Qwen3ForCausalLM: Qwen2's block with attention_bias on q, k, v, o and a per-head QK norm.
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.pre_norm", "attn.qkv_bias", "attn.out_bias", "attn.qk_norm.per_head",
    "attn.sliding", "mlp.gated", *ACTIVATION_FEATURES, "head.tied",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = llama.LAYER_MODULES
IGNORED = frozenset({"attention_dropout"})  # off in eval
DEFAULT_HEAD_DIM = 128  # Qwen3Config.head_dim


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Qwen3Config fields (defaults: the Qwen3Config class defaults, Qwen2Config's) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, qwen2.DEFAULTS)
    bias = cfg.flag("attention_bias", False)  # Qwen3Attention: bias on q, k, v and o together
    return ModelConfig(
        **fields, head_dim=cfg.positive_integer("head_dim", DEFAULT_HEAD_DIM),
        **qwen2.sliding_fields(cfg, fields["n_layers"]),
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-6), qk_norm="per_head",
        qkv_bias=bias, attn_out_bias=bias, mlp="gated", activation=cfg.activation("hidden_act", "silu"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Qwen3Config fields; ConversionError if Qwen3 cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | {"head_dim", "norm_eps", "qkv_bias", "attn_out_bias", "attn_pattern",
                                           "sliding_window"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated", "qk_norm": "per_head"},
        rules=[llama.attention_bias_rule(c), activation_rule(c), rope_scaling_rule(c), layer_types_rule(c)],
    )
    return llama.llama_style_hf_fields(c) | {"head_dim": c.head_dim, "rms_norm_eps": c.norm_eps,
                                            "attention_bias": c.qkv_bias, **qwen2.sliding_hf_fields(c)}


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's tensors and each layer's q_norm, k_norm."""
    table = llama.entries(c)
    for i in range(c.n_layers):
        table += llama.qk_norm_entries(c, i)
    return table
