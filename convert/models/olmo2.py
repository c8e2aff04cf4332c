"""OLMo 2 (`Olmo2ForCausalLM`, transformers models/olmo2, 5.23; allenai/OLMo-2-*) <-> lmref.

LLaMA's attention and MLP tensors (convert/models/llama.py) in the "reordered norm" block of
OLMo et al. 2024, section 3.1 (`Olmo2DecoderLayer`: h = h + post_attention_layernorm(attn(h)),
h = h + post_feedforward_layernorm(mlp(h)); no input norm, lmref's
`norm_placement="post_sublayer"`), and an RMSNorm over the whole q and k projections before
they are split into heads (`Olmo2Attention`: q_norm [H*hd], k_norm [K*hd]; lmref's
`qk_norm="per_projection"`).  `attention_bias` puts biases on q, k, v and o together;
`head_dim` is no Olmo2Config field, but the attention reads it when the file has it.
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layout import Entry, same
from lmref.convert.models import llama, qwen2
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "olmo2"
ARCHITECTURE = "Olmo2ForCausalLM"
PREFIX = "model."  # Olmo2PreTrainedModel.base_model_prefix

# Olmo2ForCausalLM: RMSNorm after each sublayer, a whole-projection QK norm, attention_bias.
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.post_sublayer_norm", "attn.qkv_bias", "attn.out_bias",
    "attn.qk_norm.per_projection", "mlp.gated", *ACTIVATION_FEATURES, "head.tied",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
# What each sublayer adds to the residual stream is its post norm's output.
LAYER_MODULES = {"attn": "model.layers.{i}.post_attention_layernorm",
                 "mlp": "model.layers.{i}.post_feedforward_layernorm", "out": "model.layers.{i}"}
IGNORED = frozenset({"attention_dropout"})  # off in eval

# Olmo2Config's class defaults where they differ from LlamaConfig's (configuration_olmo2.py).
DEFAULTS = llama.DEFAULTS | dict(vocab_size=50304)
DEFAULT_EPS = 1e-5  # Olmo2Config.rms_norm_eps


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Olmo2Config fields (defaults: the Olmo2Config class defaults) -> ModelConfig."""
    fields = llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    bias = cfg.flag("attention_bias", False)  # Olmo2Attention: bias on q, k, v and o together
    return ModelConfig(
        **fields, head_dim=llama.head_dim(cfg, fields),
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", DEFAULT_EPS), norm_placement="post_sublayer",
        qk_norm="per_projection", qkv_bias=bias, attn_out_bias=bias,
        mlp="gated", activation=cfg.activation("hidden_act", "silu"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Olmo2Config fields; ConversionError if OLMo 2 cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=llama.LLAMA_STYLE_MAPPED | {"head_dim", "norm_eps", "qkv_bias", "attn_out_bias"},
        fixed={"position": "rope", "norm": "rmsnorm", "norm_placement": "post_sublayer",
               "qk_norm": "per_projection", "mlp": "gated"},
        rules=[llama.attention_bias_rule(c), activation_rule(c), rope_scaling_rule(c)],
    )
    return llama.llama_style_hf_fields(c) | qwen2.head_dim_hf_fields(c) | {
        "rms_norm_eps": c.norm_eps, "attention_bias": c.qkv_bias, "pad_token_id": None,
    }


def entries(c: ModelConfig) -> list[Entry]:
    """Each layer: attention with its q/k norms, the MLP, and the two post norms."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        h, p = f"model.layers.{i}", f"layers.{i}"
        table += llama.attention_mlp_entries(c, i) + llama.qk_norm_entries(c, i)
        table += [same(f"{h}.post_attention_layernorm.weight", f"{p}.attn_post_norm.weight"),
                  same(f"{h}.post_feedforward_layernorm.weight", f"{p}.mlp_post_norm.weight")]
    return table + [same("model.norm.weight", "final_norm.weight")] + llama.head_entries(c)
