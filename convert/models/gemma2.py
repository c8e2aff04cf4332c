"""Gemma 2 (`Gemma2ForCausalLM`, transformers models/gemma2, 5.23) <-> lmref.

Gemma's conventions (convert/models/gemma.py) in a sandwich block (`Gemma2DecoderLayer`: a
norm before and after each sublayer, lmref's `norm_placement="sandwich"`), with
(`modeling_gemma2.py`): scores scaled by `query_pre_attn_scalar`^-0.5 (lmref's
`query_scale_dim`), capped by `attn_logit_softcapping` before the mask, logits capped by
`final_logit_softcapping`, and sliding-window layers per `layer_types` (by default layer i
slides iff (i + 1) % 2, i.e. the even layers: `Gemma2Config.__post_init__`).  The activation
is `hidden_activation` (`Gemma2MLP`); the `hidden_act` key the released configs also carry is
never read.  Eager attention is the path that caps: transformers' sdpa path refuses it.

`query_pre_attn_scalar` equal to head_dim is the usual scale, read as `query_scale_dim` None
(Gemma 2 9B, Gemma 3: 256 = head_dim), and written as head_dim.
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layer_types import attention_fields, layer_types, layer_types_rule
from lmref.convert.layout import Entry
from lmref.convert.models import gemma, llama
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "gemma2"
ARCHITECTURE = "Gemma2ForCausalLM"
PREFIX = "model."  # Gemma2PreTrainedModel.base_model_prefix

# Gemma2ForCausalLM: Gemma's, sandwich norms, query scale, both softcaps, sliding layers.
FEATURES = declare(
    *ROPE_FEATURES, "embedding.scale", "norm.rmsnorm", "norm.unit_offset", "block.sandwich_norm",
    "attn.qkv_bias", "attn.out_bias", "attn.query_scale", "attn.softcap", "attn.sliding", "mlp.gated",
    *ACTIVATION_FEATURES, "head.tied", "head.softcap",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
# What each sublayer adds to the residual stream is its post norm's output.
LAYER_MODULES = {"attn": "model.layers.{i}.post_attention_layernorm",
                 "mlp": "model.layers.{i}.post_feedforward_layernorm", "out": "model.layers.{i}"}
IGNORED = frozenset({
    "attention_dropout",  # off in eval
    "hidden_act",  # released configs repeat hidden_activation here; Gemma2MLP reads hidden_activation only
    "cache_implementation",  # "hybrid": the KV cache class generate() builds, not the numbers
    "sliding_window_size",  # released configs repeat sliding_window here; neither 4.57 nor 5.23 reads it
})

# Gemma2Config's class defaults where they differ from GemmaConfig's (configuration_gemma2.py).
DEFAULTS = gemma.DEFAULTS | dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                 num_attention_heads=8, num_key_value_heads=4)
DEFAULT_WINDOW, DEFAULT_QUERY_SCALE = 4096, 256  # Gemma2Config.sliding_window, .query_pre_attn_scalar
DEFAULT_ATTN_SOFTCAP, DEFAULT_FINAL_SOFTCAP = 50.0, 30.0  # .attn_logit_softcapping, .final_logit_softcapping
MAPPED = gemma.MAPPED | {"attn_pattern", "sliding_window", "query_scale_dim", "final_logit_softcap"}


def query_scale_dim(cfg: HFConfig, head_dim: int) -> int | None:
    """`query_pre_attn_scalar` (an int in Gemma2Config; some configs write 144.0), None when it
    is head_dim: the plain head_dim^-0.5 scale."""
    value = cfg.get("query_pre_attn_scalar", DEFAULT_QUERY_SCALE)
    value = int(value) if isinstance(value, float) and value.is_integer() else value
    value = cfg.checked_positive("query_pre_attn_scalar", value)
    return None if value == head_dim else value


def layer_fields(cfg: HFConfig, n_layers: int, period: int) -> dict:
    """`attn_pattern` and `sliding_window`: `layer_types`, or by default layer i sliding iff
    (i + 1) % period (Gemma 2: 2; Gemma 3: `sliding_window_pattern`, 6)."""
    types = cfg.get("layer_types")
    if types is None:
        period = cfg.checked_positive("sliding_window_pattern", period)
        types = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(n_layers)]
    return attention_fields(cfg, types, cfg.optional_positive_integer("sliding_window", DEFAULT_WINDOW), n_layers)


def layer_hf_fields(c: ModelConfig) -> dict:
    """`layer_fields`' inverse, the query scale, the final softcap and the activation (as
    `hidden_activation`, which is what Gemma 2 and 3 read)."""
    # Gemma2Model builds the sliding mask whether a layer uses it or not, and raises without a
    # window: a model with no sliding layer keeps the class default, which no layer reads.
    window = DEFAULT_WINDOW if c.sliding_window is None else c.sliding_window
    return {"layer_types": layer_types(c), "sliding_window": window,
            "query_pre_attn_scalar": c.query_scale_dim or c.head_dim, "final_logit_softcapping": c.final_logit_softcap,
            "hidden_activation": gemma.ACTIVATION_TO_GEMMA[c.activation]}


def heads_rule(c: ModelConfig) -> tuple[str, bool, str]:
    """Gemma2Config and Gemma3TextConfig.validate_architecture refuse a hidden_size that is no
    multiple of num_attention_heads (although head_dim is a field of its own)."""
    return ("n_heads", c.d_model % c.n_heads == 0,
            f"transformers requires d_model ({c.d_model}) divisible by n_heads ({c.n_heads})")


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Gemma2Config fields (defaults: the Gemma2Config class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS) | gemma.gemma_fields(cfg)
    return ModelConfig(
        **fields, **layer_fields(cfg, fields["n_layers"], period=2),
        norm_placement="sandwich", query_scale_dim=query_scale_dim(cfg, fields["head_dim"]),
        attn_softcap=cfg.get("attn_logit_softcapping", DEFAULT_ATTN_SOFTCAP),
        final_logit_softcap=cfg.get("final_logit_softcapping", DEFAULT_FINAL_SOFTCAP),
        activation=cfg.activation("hidden_activation", "gelu_pytorch_tanh"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Gemma2Config fields; ConversionError if Gemma 2 cannot express it."""
    check_expressible(
        c, MODEL_TYPE, mapped=MAPPED | {"attn_softcap"}, fixed=gemma.FIXED | {"norm_placement": "sandwich"},
        rules=[*gemma.gemma_rules(c), activation_rule(c), rope_scaling_rule(c), layer_types_rule(c),
               heads_rule(c)],
    )
    return (llama.shape_hf_fields(c) | llama.rope_hf_fields(c) | gemma.gemma_hf_fields(c) | layer_hf_fields(c)
            | {"attn_logit_softcapping": c.attn_softcap})


def entries(c: ModelConfig) -> list[Entry]:
    return gemma.sandwich_entries(c)
