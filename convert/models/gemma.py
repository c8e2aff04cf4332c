"""Gemma (`GemmaForCausalLM`, transformers models/gemma, 5.23) <-> lmref, and what the Gemma
types share (gemma2.py, gemma3_text.py).

LLaMA's module names and layout (convert/models/llama.py) with Gemma's conventions
(`modeling_gemma.py`; Google's `gemma` package agrees): embeddings scaled by sqrt(hidden_size)
(`GemmaTextScaledWordEmbedding`), RMSNorms that scale by (1 + w) and store w (`GemmaRMSNorm`,
lmref's `norm_unit_offset=True`: a config without it cannot be written as a Gemma type),
`attention_bias` on q, k, v and o together, and a head tied to the embedding by default.

The activation is `hidden_act`, and `GemmaConfig.__post_init__` (5.23) rewrites "gelu", which
the released configs carry, to "gelu_pytorch_tanh": the tanh GELU Google's code runs.  So a
gemma config.json cannot ask for the exact GELU, and lmref reads "gelu" as the tanh GELU.
Earlier releases disagree (the 5.23 source cites both changes: transformers PR #29402 made
`GemmaMLP` run `hidden_activation`, tanh by default; PR #35235 dropped that, so 4.57's
`GemmaMLP` runs `ACT2FN[hidden_act]`, the exact GELU for "gelu"); lmref writes
"gelu_pytorch_tanh", which every version reads alike.
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FROM_HF, ACTIVATION_TO_HF, HFConfig, check_expressible
from lmref.convert.layout import Entry, same
from lmref.convert.models import llama
from lmref.convert.rope import ROPE_FEATURES, rope_scaling_rule
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "gemma"
ARCHITECTURE = "GemmaForCausalLM"
PREFIX = "model."  # GemmaPreTrainedModel.base_model_prefix

# The activations a Gemma type writes: the tanh GELU under the name its configs use.
ACTIVATION_TO_GEMMA = ACTIVATION_TO_HF | {"gelu_tanh": "gelu_pytorch_tanh"}
# GemmaForCausalLM: scaled embeddings, (1 + w) RMSNorm, attention_bias, a gated MLP; no exact GELU.
FEATURES = declare(
    *ROPE_FEATURES, "embedding.scale", "norm.rmsnorm", "norm.unit_offset", "block.pre_norm",
    "attn.qkv_bias", "attn.out_bias", "mlp.gated", "activation.gelu_tanh", "activation.silu", "activation.relu",
    "head.tied",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = llama.LAYER_MODULES
IGNORED = frozenset({"attention_dropout"})  # off in eval

# GemmaConfig's class defaults where they differ from LlamaConfig's (configuration_gemma.py).
DEFAULTS = llama.DEFAULTS | dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                                 num_attention_heads=16, max_position_embeddings=8192, num_key_value_heads=16,
                                 tie_word_embeddings=True)
DEFAULT_HEAD_DIM, DEFAULT_EPS = 256, 1e-6  # head_dim, rms_norm_eps of GemmaConfig, Gemma2Config, Gemma3TextConfig
# What every Gemma type hard-codes (and norm_unit_offset, `gemma_rules`).
FIXED = {"position": "rope", "norm": "rmsnorm", "embedding_scale": "sqrt_d_model", "mlp": "gated"}
MAPPED = llama.LLAMA_STYLE_MAPPED | {"head_dim", "norm_eps", "qkv_bias", "attn_out_bias", "norm_unit_offset"}


def gemma_rules(c: ModelConfig) -> list[tuple[str, bool, str]]:
    """The relations every Gemma type requires."""
    return [llama.attention_bias_rule(c),
            ("norm_unit_offset", c.norm_unit_offset,
             "a Gemma checkpoint stores the w of its (1 + w) norms; lmref moves values and never computes "
             "w = weight - 1")]


def gemma_fields(cfg: HFConfig) -> dict:
    """The ModelConfig fields every Gemma type reads alike (besides llama.shape_fields)."""
    cfg.require("use_bidirectional_attention", None, (None, False), "lmref models are causal")
    bias = cfg.flag("attention_bias", False)  # q, k, v and o together
    return dict(
        head_dim=cfg.positive_integer("head_dim", DEFAULT_HEAD_DIM),
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", DEFAULT_EPS), norm_unit_offset=True,
        embedding_scale="sqrt_d_model", qkv_bias=bias, attn_out_bias=bias, mlp="gated",
    )


def gemma_hf_fields(c: ModelConfig) -> dict:
    """`gemma_fields`'s inverse (use_bidirectional_attention left to the class default, off).
    pad_token_id null: the classes' default 0 only marks an embedding row that training leaves
    alone, which lmref does not know of."""
    return {"head_dim": c.head_dim, "rms_norm_eps": c.norm_eps, "attention_bias": c.qkv_bias, "pad_token_id": None}


def activation(cfg: HFConfig) -> str:
    """gemma's `hidden_act`, "gelu" read as GemmaConfig 5.23 rewrites it; a `hidden_activation`
    (which 4.x releases between PRs #29402 and #35235 ran instead, 5.x ignores) must say the same."""
    name = cfg.get("hidden_act", "gelu_pytorch_tanh")
    name = "gelu_pytorch_tanh" if name == "gelu" else name
    if name not in ACTIVATION_FROM_HF:
        cfg.fail("hidden_act", name, f"lmref maps only {', '.join(sorted(ACTIVATION_FROM_HF))}")
    legacy = cfg.get("hidden_activation")
    if legacy is not None and ACTIVATION_FROM_HF.get(legacy) != ACTIVATION_FROM_HF[name]:
        cfg.fail("hidden_activation", legacy, f"differs from hidden_act ({name}): transformers 5.x runs hidden_act, "
                 "some 4.x releases ran hidden_activation, so the file means two models")
    return ACTIVATION_FROM_HF[name]


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """GemmaConfig fields (defaults: the GemmaConfig class defaults) -> ModelConfig."""
    return ModelConfig(**llama.llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS), **gemma_fields(cfg),
                       activation=activation(cfg))


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> GemmaConfig fields; ConversionError if Gemma cannot express it."""
    check_expressible(
        c, MODEL_TYPE, mapped=MAPPED, fixed=FIXED,
        rules=[*gemma_rules(c), rope_scaling_rule(c),
               ("activation", c.activation in ("gelu_tanh", "silu", "relu"),
                f"{c.activation!r}: GemmaConfig rewrites hidden_act 'gelu' (the exact GELU) to 'gelu_pytorch_tanh'")],
    )
    return llama.llama_style_hf_fields(c) | gemma_hf_fields(c) | {"hidden_act": ACTIVATION_TO_GEMMA[c.activation]}


def sandwich_entries(c: ModelConfig) -> list[Entry]:
    """The tensors of Gemma 2 and 3: LLaMA's attention and MLP (with q_norm, k_norm when the
    config has them), four norms per layer (`Gemma2DecoderLayer`: input_layernorm before the
    attention, post_attention_layernorm after it, pre_feedforward_layernorm and
    post_feedforward_layernorm around the MLP), the final norm and the head."""
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        h, p = f"model.layers.{i}", f"layers.{i}"
        table += [same(f"{h}.input_layernorm.weight", f"{p}.attn_norm.weight"),
                  same(f"{h}.post_attention_layernorm.weight", f"{p}.attn_post_norm.weight"),
                  same(f"{h}.pre_feedforward_layernorm.weight", f"{p}.mlp_norm.weight"),
                  same(f"{h}.post_feedforward_layernorm.weight", f"{p}.mlp_post_norm.weight")]
        table += llama.attention_mlp_entries(c, i) + (llama.qk_norm_entries(c, i) if c.qk_norm != "none" else [])
    return table + [same("model.norm.weight", "final_norm.weight")] + llama.head_entries(c)


def entries(c: ModelConfig) -> list[Entry]:
    """LLaMA's tensors (the norm weights are the w of (1 + w))."""
    return llama.entries(c)
