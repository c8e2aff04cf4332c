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
    ACTIVATION_TO_HF,
    HFConfig,
    activation_rule,
    check_expressible,
)
from lmref.convert.layout import Entry
from lmref.convert.models import llama
from lmref.convert.rope import ROPE_FEATURES, rope_from_hf, rope_scaling_rule, rope_to_hf
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


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """MistralConfig fields (defaults: the MistralConfig class defaults) -> ModelConfig."""
    d, n_heads = cfg.get("hidden_size", 4096), cfg.get("num_attention_heads", 32)
    max_seq_len = cfg.get("max_position_embeddings", 4096 * 32)
    theta, scaling = rope_from_hf(cfg, max_seq_len)
    window = cfg.get("sliding_window", DEFAULT_WINDOW)
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=cfg.get("vocab_size", 32000), d_model=d,
        n_layers=cfg.get("num_hidden_layers", 32), n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,  # MistralConfig.__post_init__: None -> MHA
        head_dim=cfg.get("head_dim") or d // n_heads,  # None -> hidden_size // num_attention_heads
        d_ff=cfg.get("intermediate_size", 14336), max_seq_len=max_seq_len,
        position="rope", rope_theta=theta, rope_scaling=scaling,
        attn_pattern=("global",) if window is None else ("sliding",), sliding_window=window,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        norm="rmsnorm", norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        mlp="gated", activation=cfg.activation("hidden_act", "silu"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> MistralConfig fields; ConversionError if Mistral cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len",
                "tie_embeddings", "norm_eps", "rope_theta", "rope_scaling", "rope_layout", "activation",
                "attn_pattern", "sliding_window"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated"},
        rules=[activation_rule(c), rope_scaling_rule(c),
               ("attn_pattern", set(c.attn_pattern) <= {"global"} or set(c.attn_pattern) == {"sliding"},
                f"Mistral's window is on every layer or on none, got attn_pattern={c.attn_pattern}")],
    )
    return {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim, "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps,
        "hidden_act": ACTIVATION_TO_HF[c.activation], "tie_word_embeddings": c.tie_embeddings,
        "sliding_window": c.sliding_window,  # null: no window (the class default is 4096)
        "rope_parameters": rope_to_hf(c),
        "bos_token_id": None, "eos_token_id": None,  # unknown to lmref
    }


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's tensors (no biases: qkv_bias and mlp_bias are off)."""
    return llama.entries(c)
