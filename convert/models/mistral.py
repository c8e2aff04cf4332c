"""Mistral (`MistralForCausalLM`, transformers models/mistral, 5.23) <-> lmref.

LLaMA's module names and layout (convert/models/llama.py) without any bias (q, k, v, o and the
MLP are hard-coded `bias=False`), and an optional sliding window on every layer:
`MistralModel.forward` builds `create_sliding_window_causal_mask` when `config.sliding_window`
is set and `create_causal_mask` when it is null (transformers `models/mistral/
modeling_mistral.py`; the window's rule, keys q - W < k <= q, was measured: spec/MATH.md).
`MistralConfig.sliding_window` defaults to 4096, so a model without a window must write null.
"""

from __future__ import annotations

from lmref.convert.fields import (
    ACTIVATION_FEATURES,
    HFConfig,
    activation_rule,
    check_expressible,
)
from lmref.convert.layout import Entry
from lmref.convert.models import llama
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "mistral"
ARCHITECTURE = "MistralForCausalLM"
PREFIX = "model."  # MistralPreTrainedModel.base_model_prefix

# MistralForCausalLM: LLaMA's RMSNorm, gated MLP and RoPE, no biases, a window on every layer.
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.pre_norm", "attn.sliding", "mlp.gated", *ACTIVATION_FEATURES, "head.tied",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = llama.LAYER_MODULES
IGNORED = frozenset({"attention_dropout"})  # off in eval
DEFAULT_WINDOW = 4096  # MistralConfig.sliding_window


# MistralConfig's class defaults where they differ from LlamaConfig's (configuration_mistral.py).
DEFAULTS = llama.DEFAULTS | dict(intermediate_size=14336, max_position_embeddings=4096 * 32, num_key_value_heads=8)


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """MistralConfig fields (defaults: the MistralConfig class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    window = cfg.optional_positive_integer("sliding_window", DEFAULT_WINDOW)
    return ModelConfig(
        **fields,
        head_dim=llama.head_dim(cfg, fields),
        attn_pattern=("global",) if window is None else ("sliding",), sliding_window=window,
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-6),
        mlp="gated", activation=cfg.activation("hidden_act", "silu"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> MistralConfig fields; ConversionError if Mistral cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | {"head_dim", "norm_eps", "attn_pattern", "sliding_window"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated"},
        rules=[activation_rule(c), rope_scaling_rule(c),
               ("attn_pattern", set(c.attn_pattern) <= {"global"} or set(c.attn_pattern) == {"sliding"},
                f"Mistral's window is on every layer or on none, got attn_pattern={c.attn_pattern}")],
    )
    return llama.llama_style_hf_fields(c) | {
        "head_dim": c.head_dim, "rms_norm_eps": c.norm_eps,
        "sliding_window": c.sliding_window,  # null: no window (the class default is 4096)
    }


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's tensors (no biases: qkv_bias and mlp_bias are off)."""
    return llama.entries(c)
