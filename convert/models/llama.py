"""LLaMA 1/2/3/3.1 (`LlamaForCausalLM`, transformers models/llama, 5.23) <-> lmref.

Checkpoint keys (transformers `models/llama/modeling_llama.py`): `model.embed_tokens`,
`model.layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
mlp.{gate,up,down}_proj}`, `model.norm`, `lm_head` (absent when tied).  Every projection is an
`nn.Linear`, stored [d_out, d_in]: the transpose of lmref's [d_in, d_out].
"""

from __future__ import annotations

from lmref.convert.fields import (
    ACTIVATION_FEATURES,
    ACTIVATION_TO_HF,
    HFConfig,
    activation_rule,
    check_expressible,
)
from lmref.convert.layout import Entry, linear, same
from lmref.convert.rope import (
    DEFAULT_THETA,
    ROPE_FEATURES,
    rope_columns_permutation,
    rope_from_hf,
    rope_scaling_rule,
    rope_to_hf,
)
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"
PREFIX = "model."  # LlamaPreTrainedModel.base_model_prefix

# LlamaForCausalLM: LlamaRMSNorm, attention_bias (q, k, v, o), LlamaMLP gated with mlp_bias.
FEATURES = declare(
    *ROPE_FEATURES, "norm.rmsnorm", "block.pre_norm",
    "attn.qkv_bias", "attn.out_bias", "mlp.gated", "mlp.bias", *ACTIVATION_FEATURES, "head.tied",
)
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # a non-persistent buffer that old checkpoints stored
LAYER_MODULES = {"attn": "model.layers.{i}.self_attn.o_proj", "mlp": "model.layers.{i}.mlp.down_proj",
                 "out": "model.layers.{i}"}

IGNORED = frozenset({
    "attention_dropout",  # off in eval
    # pretraining_tp: older transformers split the matmuls into slices (same math, other
    # summation order); 5.x no longer reads it
    "pretraining_tp",
})


# The class defaults of LlamaConfig (transformers models/llama/configuration_llama.py) for the
# fields the llama-style configs share; each other class states where its own differ.
DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, max_position_embeddings=2048, num_key_value_heads=None,
                tie_word_embeddings=False)


# The positive integers `shape_fields` reads (convert/fields.py `positive_integer`).
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings")


def shape_fields(cfg: HFConfig, name: str, model_type: str, defaults: dict) -> dict:
    """The ModelConfig sizes and tied head that every llama-style config.json (llama, mistral,
    olmo, olmo2, qwen2, qwen3, gemma, gemma2, gemma3_text) spells the same way.  `defaults`:
    the class's own defaults of the keys of `DEFAULTS`."""
    size = {key: cfg.positive_integer(key, defaults[key]) for key in SHAPE_KEYS}
    # `__post_init__` of each class: a null num_key_value_heads means MHA
    n_kv = cfg.optional_positive_integer("num_key_value_heads", defaults["num_key_value_heads"])
    return dict(
        name=name, hf_model_type=model_type, vocab_size=size["vocab_size"], d_model=size["hidden_size"],
        n_layers=size["num_hidden_layers"], n_heads=size["num_attention_heads"],
        n_kv_heads=size["num_attention_heads"] if n_kv is None else n_kv, d_ff=size["intermediate_size"],
        max_seq_len=size["max_position_embeddings"],
        tie_embeddings=cfg.flag("tie_word_embeddings", defaults["tie_word_embeddings"]),
    )


def head_dim(cfg: HFConfig, fields: dict, default: int | None = None) -> int:
    """`head_dim` (`default` when absent), null: hidden_size // num_attention_heads (LlamaConfig,
    and the same in every class that reads it so)."""
    stated = cfg.optional_positive_integer("head_dim", default)
    return fields["d_model"] // fields["n_heads"] if stated is None else stated


def stated_head_dim(c: ModelConfig) -> dict:
    """{"head_dim": ...} where it is not what a class without the field derives (hidden_size //
    num_attention_heads: OLMo, Phi-3), else nothing: their usual config.json has no such key."""
    return {} if c.head_dim == c.d_model // c.n_heads else {"head_dim": c.head_dim}


def llama_style_fields(cfg: HFConfig, name: str, model_type: str, defaults: dict) -> dict:
    """`shape_fields` and the one RoPE of every layer (convert/rope.py; `defaults` may give
    the class's own default theta as "rope_theta")."""
    fields = shape_fields(cfg, name, model_type, defaults)
    theta, scaling = rope_from_hf(cfg, fields["max_seq_len"], defaults.get("rope_theta", DEFAULT_THETA))
    return fields | dict(position="rope", rope_theta=theta, rope_scaling=scaling)


def shape_hf_fields(c: ModelConfig) -> dict:
    """`shape_fields`'s inverse."""
    return {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "max_position_embeddings": c.max_seq_len, "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": None, "eos_token_id": None,  # unknown to lmref
    }


def rope_hf_fields(c: ModelConfig) -> dict:
    """The one RoPE of every layer in the 5.x key and the 4.x keys."""
    rope = rope_to_hf(c)
    return {"rope_parameters": rope, **legacy_rope_fields(rope)}


def llama_style_hf_fields(c: ModelConfig) -> dict:
    """`llama_style_fields`'s inverse, with the activation under `hidden_act`."""
    return shape_hf_fields(c) | rope_hf_fields(c) | {"hidden_act": ACTIVATION_TO_HF[c.activation]}


def legacy_rope_fields(rope_parameters: dict) -> dict:
    """The same RoPE in the keys transformers 4.x reads, `rope_theta` and `rope_scaling`: 4.57
    ignores `rope_parameters` (5.x) and would run theta 10000 without a word.  transformers 5.x
    reads these keys too (`convert_rope_params_to_dict`: `rope_scaling` wins over
    `rope_parameters`), and they say the same thing."""
    scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
    return {"rope_theta": rope_parameters["rope_theta"],
            "rope_scaling": None if scaling["rope_type"] == "default" else scaling}


# The ModelConfig fields llama_style_fields and llama_style_hf_fields carry.
LLAMA_STYLE_MAPPED = {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len",
                      "tie_embeddings", "rope_theta", "rope_scaling", "rope_layout", "activation"}


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """LlamaConfig fields (defaults: the LlamaConfig class defaults) -> ModelConfig."""
    fields = llama_style_fields(cfg, name, MODEL_TYPE, DEFAULTS)
    bias = cfg.flag("attention_bias", False)  # LlamaAttention: bias on q, k, v and o together
    return ModelConfig(
        **fields,
        head_dim=head_dim(cfg, fields),
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", 1e-6),
        qkv_bias=bias, attn_out_bias=bias,
        mlp="gated", activation=cfg.activation("hidden_act", "silu"), mlp_bias=cfg.flag("mlp_bias", False),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> LlamaConfig fields; ConversionError if LLaMA cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=LLAMA_STYLE_MAPPED | {"head_dim", "norm_eps", "qkv_bias", "attn_out_bias", "mlp_bias"},
        fixed={"position": "rope", "norm": "rmsnorm", "mlp": "gated"},
        rules=[attention_bias_rule(c), activation_rule(c), rope_scaling_rule(c),
               ("n_heads", c.d_model % c.n_heads == 0,
                f"LlamaConfig requires d_model ({c.d_model}) divisible by n_heads ({c.n_heads})")],
    )
    return llama_style_hf_fields(c) | {
        "head_dim": c.head_dim, "rms_norm_eps": c.norm_eps, "attention_bias": c.qkv_bias, "mlp_bias": c.mlp_bias,
    }


def attention_bias_rule(c: ModelConfig) -> tuple[str, bool, str]:
    return ("attn_out_bias", c.qkv_bias == c.attn_out_bias,
            f"transformers' attention_bias puts biases on q, k, v and o together (qkv_bias={c.qkv_bias})")


def attention_mlp_entries(c: ModelConfig, i: int) -> list[Entry]:
    """Layer i's attention and MLP tensors, shared by llama and olmo (same module names)."""
    return attention_entries(c, i) + mlp_entries(c, i)


def attention_entries(c: ModelConfig, i: int) -> list[Entry]:
    """Layer i's `self_attn` tensors (the llama-style types and their mixtures of experts)."""
    h, p = f"model.layers.{i}.self_attn", f"layers.{i}.attn"
    q_perm = rope_columns_permutation(c.n_heads, c.head_dim, c.rope_layout)
    k_perm = rope_columns_permutation(c.n_kv_heads, c.head_dim, c.rope_layout)
    # Every weight here is an nn.Linear [d_out, d_in]: `linear` stores the transpose of
    # lmref's [d_in, d_out].  q and k also get the RoPE layout permutation (None for halves).
    table = [
        linear(f"{h}.q_proj.weight", f"{p}.wq", perm=q_perm),
        linear(f"{h}.k_proj.weight", f"{p}.wk", perm=k_perm),
        linear(f"{h}.v_proj.weight", f"{p}.wv"),
        linear(f"{h}.o_proj.weight", f"{p}.wo"),
    ]
    if c.qkv_bias:  # the q and k biases are rotated with their projections: same permutation
        table += [Entry(f"{h}.q_proj.bias", (f"{p}.bq",), perm=q_perm),
                  Entry(f"{h}.k_proj.bias", (f"{p}.bk",), perm=k_perm),
                  same(f"{h}.v_proj.bias", f"{p}.bv")]
    if c.attn_out_bias:  # with qkv_bias in llama and olmo (attention_bias); never in qwen2
        table.append(same(f"{h}.o_proj.bias", f"{p}.bo"))
    return table


def mlp_entries(c: ModelConfig, i: int) -> list[Entry]:
    """Layer i's dense `mlp` tensors (nn.Linear weights, transposed)."""
    h, p = f"model.layers.{i}.mlp", f"layers.{i}.mlp"
    table = [linear(f"{h}.gate_proj.weight", f"{p}.w_gate"), linear(f"{h}.up_proj.weight", f"{p}.w_up"),
             linear(f"{h}.down_proj.weight", f"{p}.w_down")]
    if c.mlp_bias:
        table += [same(f"{h}.gate_proj.bias", f"{p}.b_gate"), same(f"{h}.up_proj.bias", f"{p}.b_up"),
                  same(f"{h}.down_proj.bias", f"{p}.b_down")]
    return table


def qk_norm_entries(c: ModelConfig, i: int) -> list[Entry]:
    """Layer i's q and k norm weights (`self_attn.q_norm`, `self_attn.k_norm`: qwen3, gemma3_text
    per head, [hd]; olmo2 over the whole projection, [H*hd] and [K*hd]).  Each weight scales the
    dims of q or k before the RoPE, so it takes the columns' RoPE layout permutation: one
    head's for a per-head weight, the projection's for a whole one."""
    h, p = f"model.layers.{i}.self_attn", f"layers.{i}.attn"
    q_heads, k_heads = (1, 1) if c.qk_norm == "per_head" else (c.n_heads, c.n_kv_heads)
    return [Entry(f"{h}.q_norm.weight", (f"{p}.q_norm.weight",),
                  perm=rope_columns_permutation(q_heads, c.head_dim, c.rope_layout)),
            Entry(f"{h}.k_norm.weight", (f"{p}.k_norm.weight",),
                  perm=rope_columns_permutation(k_heads, c.head_dim, c.rope_layout))]


def head_entries(c: ModelConfig) -> list[Entry]:
    return [] if c.tie_embeddings else [linear("lm_head.weight", "lm_head.weight")]  # nn.Linear(d, V): [V, d]


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        table += [same(f"model.layers.{i}.input_layernorm.weight", f"layers.{i}.attn_norm.weight"),
                  same(f"model.layers.{i}.post_attention_layernorm.weight", f"layers.{i}.mlp_norm.weight")]
        table += attention_mlp_entries(c, i)
    return table + [same("model.norm.weight", "final_norm.weight")] + head_entries(c)
