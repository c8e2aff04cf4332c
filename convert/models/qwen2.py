"""Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`, transformers models/qwen2, 5.23) <-> lmref.

LLaMA's module names and layout (convert/models/llama.py) with biases on q, k and v and none
on o (`Qwen2Attention`: hard-coded `bias=True` on q_proj, k_proj, v_proj, `bias=False` on
o_proj; `Qwen2MLP` has none), and sliding-window layers chosen per layer:
`Qwen2Config.__post_init__` drops `sliding_window` unless `use_sliding_window` is true, then
makes layer i sliding iff i >= `max_window_layers` when the file gives no `layer_types`
(transformers 4.57 does the same).  Released configs set
`use_sliding_window: false`, so no layer slides whatever `sliding_window` says.
`head_dim` is no Qwen2Config field, but `Qwen2Attention` and the RoPE read it when the file
has it (`getattr(config, "head_dim", hidden_size // num_attention_heads)`).
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layer_types import attention_fields, layer_types, layer_types_rule
from lmref.convert.layout import Entry
from lmref.convert.models import llama
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "qwen2"
ARCHITECTURE = "Qwen2ForCausalLM"
PREFIX = "model."  # Qwen2PreTrainedModel.base_model_prefix

# Qwen2ForCausalLM: LLaMA's RMSNorm, gated MLP and RoPE, q/k/v biases, sliding layers.
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.pre_norm", "attn.qkv_bias", "attn.sliding", "mlp.gated",
    *ACTIVATION_FEATURES, "head.tied",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = llama.LAYER_MODULES
IGNORED = frozenset({
    "attention_dropout",  # off in eval
    "use_mrope",  # Qwen2.5 configs carry it (false); multimodal RoPE is Qwen2-VL's, Qwen2ForCausalLM never reads it
})

# Qwen2Config's class defaults where they differ from LlamaConfig's (configuration_qwen2.py);
# Qwen3Config's are the same.
DEFAULTS = llama.DEFAULTS | dict(vocab_size=151936, intermediate_size=22016, max_position_embeddings=32768,
                                 num_key_value_heads=32)
DEFAULT_WINDOW, DEFAULT_MAX_WINDOW_LAYERS = 4096, 28  # Qwen2Config.sliding_window, .max_window_layers


def sliding_fields(cfg: HFConfig, n_layers: int) -> dict:
    """`attn_pattern` and `sliding_window` of a qwen2 or qwen3 config.json, by
    `Qwen2Config.__post_init__`'s rule (Qwen3Config's is the same)."""
    window = used_window(cfg)
    max_window_layers = first_window_layer(cfg)
    types = cfg.get("layer_types")
    if types is None:
        types = ["sliding_attention" if window is not None and i >= max_window_layers else "full_attention"
                 for i in range(n_layers)]
    return attention_fields(cfg, types, window, n_layers)


def used_window(cfg: HFConfig) -> int | None:
    """`sliding_window` where `use_sliding_window` says so, else None: `__post_init__` of
    Qwen2Config, Qwen2MoeConfig and Qwen3MoeConfig drops it unread."""
    if not cfg.flag("use_sliding_window", False):
        cfg.get("sliding_window")
        return None
    return cfg.optional_positive_integer("sliding_window", DEFAULT_WINDOW)


def first_window_layer(cfg: HFConfig) -> int:
    """`max_window_layers`: a layer index (0: from the first layer on), compared with each
    layer's in the classes' rules."""
    index = cfg.checked_integer("max_window_layers", cfg.get("max_window_layers", DEFAULT_MAX_WINDOW_LAYERS))
    if index < 0:
        cfg.fail("max_window_layers", index, "expected a layer index, 0 or more")
    return index


def sliding_hf_fields(c: ModelConfig) -> dict:
    """`sliding_fields`'s inverse.  `layer_types` spells every layer out, which transformers
    4.57 and 5.x both follow; `max_window_layers` is the first sliding layer, which says the
    same for the pattern Qwen's rule makes (global layers, then sliding ones)."""
    kinds = c.layer_attn_kinds
    return {"use_sliding_window": "sliding" in kinds, "sliding_window": c.sliding_window,
            "max_window_layers": kinds.index("sliding") if "sliding" in kinds else c.n_layers,
            "layer_types": layer_types(c)}


def head_dim_hf_fields(c: ModelConfig) -> dict:
    """`head_dim`'s inverse: the key only where it is not hidden_size // num_attention_heads,
    since it is no field of the class (Qwen2Config, Olmo2Config)."""
    return {} if c.head_dim == c.d_model // c.n_heads else {"head_dim": c.head_dim}


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Qwen2Config fields (defaults: the Qwen2Config class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    return ModelConfig(
        **fields, head_dim=llama.head_dim(cfg, fields), **sliding_fields(cfg, fields["n_layers"]),
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-6), qkv_bias=True,
        mlp="gated", activation=cfg.activation("hidden_act", "silu"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Qwen2Config fields; ConversionError if Qwen2 cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | {"head_dim", "norm_eps", "attn_pattern", "sliding_window"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated", "qkv_bias": True},
        rules=[activation_rule(c), rope_scaling_rule(c), layer_types_rule(c)],
    )
    return llama.llama_style_hf_fields(c) | head_dim_hf_fields(c) | {"rms_norm_eps": c.norm_eps,
                                                                    **sliding_hf_fields(c)}


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's tensors: q, k, v biases, no o bias (attn_out_bias is off)."""
    return llama.entries(c)
