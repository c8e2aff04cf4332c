"""GPT-NeoX-20B and Pythia (`GPTNeoXForCausalLM`, transformers models/gpt_neox, 5.23) <-> lmref.

Checkpoint keys (transformers `models/gpt_neox/modeling_gpt_neox.py`): `gpt_neox.embed_in`,
`gpt_neox.layers.{i}.{input_layernorm, post_attention_layernorm, attention.query_key_value,
attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h}`, `gpt_neox.final_layer_norm`,
`embed_out` (absent when tied).  5.23 names the head `lm_head` in memory and renames it on
load and save (conversion_mapping.py, "GPTNeoXForCausalLM": `^embed_out.` <-> `lm_head.`);
4.57's module is `embed_out`.  Projections are `nn.Linear` ([d_out, d_in]); q, k and v are
one tensor, fused per head (`per_head_order`).

The RoPE settings have two spellings.  transformers 4.57 and the Hub's files say `rotary_pct`
and `rotary_emb_base` (4.57 copies them over any top-level `partial_rotary_factor` and
`rope_theta`), and scale with `rope_scaling`; 5.23 reads `rope_scaling` or else
`rope_parameters`, each dict's `partial_rotary_factor` and `rope_theta` defaulting to
`rotary_pct` (0.25) and `rotary_emb_base` (10000) (`GPTNeoXConfig.convert_rope_params_to_dict`).
lmref reads every spelling and refuses a file where two disagree (transformers 4.x and 5.x
would run two models); it writes all of them, saying the same thing.
"""

from __future__ import annotations

from lmref.convert.fields import (
    ACTIVATION_FEATURES,
    ACTIVATION_TO_HF,
    HFConfig,
    activation_rule,
    check_expressible,
)
from lmref.convert.layout import Entry, linear, per_head_order, same
from lmref.convert.rope import (
    DEFAULT_THETA, agreed, agreed_scaling, check_rotary_width, rope_dicts, rope_scaling_rule, rope_to_hf, stated,
)
from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.features import declare

MODEL_TYPE = "gpt_neox"
ARCHITECTURE = "GPTNeoXForCausalLM"
PREFIX = "gpt_neox."  # GPTNeoXPreTrainedModel.base_model_prefix

# GPTNeoXForCausalLM: partial RoPE in halves (`rotate_half` on the first rotary dims), the
# ROPE_INIT_FUNCTIONS scalings, LayerNorms with bias, a parallel or sequential GPTNeoXLayer,
# attention_bias (q, k, v and o), GPTNeoXMLP with biases, an untied head unless
# tie_word_embeddings.
FEATURES = declare(
    "positions.rope", "rope.partial", "rope.scaling.linear", "rope.scaling.llama3", "norm.layernorm", "norm.bias",
    "block.pre_norm", "block.parallel", "attn.qkv_bias", "attn.out_bias", "mlp.plain", "mlp.bias",
    *ACTIVATION_FEATURES, "head.tied",
)
# Buffers of old checkpoints (`_keys_to_ignore_on_load_unexpected`: the causal mask
# `attention.bias` and `attention.masked_bias`; the rotary `inv_freq`): not weights.
IGNORED_SUFFIXES = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")
# GPTNeoXLayer adds attention.dense's and the MLP's outputs (the dropouts after them are off in eval).
LAYER_MODULES = {"attn": "gpt_neox.layers.{i}.attention.dense", "mlp": "gpt_neox.layers.{i}.mlp.dense_4h_to_h",
                 "out": "gpt_neox.layers.{i}"}

# Why two RoPE spellings must agree (convert/rope.py `agreed`).
SPELLINGS = "transformers 4.x reads rotary_pct and rotary_emb_base, 5.x the RoPE dicts"
IGNORED = frozenset({
    "attention_dropout", "hidden_dropout",  # dropout: off in eval
    # the same dropouts under names no GPTNeoXConfig reads (EleutherAI/gpt-neox-20b's file)
    "attention_probs_dropout_prob", "hidden_dropout_prob",
    "classifier_dropout",  # GPTNeoXForTokenClassification's head, not the LM
    "is_decoder",  # GPTNeoXModel's mask is causal whatever it says (create_causal_mask)
})
# GPTNeoXConfig's defaults (configuration_gpt_neox.py, 5.23 and 4.57 alike)
HF_ROTARY_PCT = 0.25
# gelu_fast (activations.py FastGELUActivation) is the tanh GELU, sqrt(2 / pi) written as
# 0.7978845608 (3.6e-12 relative): EleutherAI/gpt-neox-20b's hidden_act.  Written back as gelu_new.
FAST_GELU = "gelu_fast"


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """GPTNeoXConfig fields (defaults: the GPTNeoXConfig class defaults) -> ModelConfig."""
    d, n_heads = cfg.positive_integer("hidden_size", 6144), cfg.positive_integer("num_attention_heads", 64)
    if d % n_heads:
        cfg.fail("num_attention_heads", n_heads,
                 f"hidden_size ({d}) must be divisible by it (GPTNeoXAttention's head_size is hidden_size / heads)")
    max_seq_len = cfg.positive_integer("max_position_embeddings", 2048)
    theta, fraction, scaling = rope_fields(cfg, d // n_heads, max_seq_len)
    bias = cfg.flag("attention_bias", True)  # GPTNeoXAttention: query_key_value and dense together
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=cfg.positive_integer("vocab_size", 50432), d_model=d,
        n_layers=cfg.positive_integer("num_hidden_layers", 44), n_heads=n_heads, n_kv_heads=n_heads,
        head_dim=d // n_heads,
        d_ff=cfg.positive_integer("intermediate_size", 24576), max_seq_len=max_seq_len,
        position="rope", rope_theta=theta, rope_fraction=fraction, rope_scaling=scaling,
        tie_embeddings=cfg.flag("tie_word_embeddings", False),
        norm="layernorm", norm_eps=cfg.number("layer_norm_eps", 1e-5), norm_bias=True,
        qkv_bias=bias, attn_out_bias=bias, mlp="plain", activation=activation(cfg), mlp_bias=True,
        # GPTNeoXLayer: x + attn(ln1(x)) + mlp(ln2(x)), or else x' = x + attn(ln1(x)); x' + mlp(ln2(x'))
        parallel_residual=cfg.flag("use_parallel_residual", True),
    )


def activation(cfg: HFConfig) -> str:
    """hidden_act (ACT2FN) as lmref's activation, gelu_fast included (FAST_GELU)."""
    if cfg.get("hidden_act", "gelu") == FAST_GELU:
        return "gelu_tanh"
    return cfg.activation("hidden_act", "gelu")


def rope_fields(cfg: HFConfig, head_dim: int, max_seq_len: int) -> tuple[float, float, RopeScaling | None]:
    """(rope_theta, rope_fraction, rope_scaling), every spelling read (module docstring)."""
    dicts = rope_dicts(cfg)
    _, theta = agreed(cfg, stated(cfg, dicts, "rotary_emb_base", "rope_theta"), ("rotary_emb_base", DEFAULT_THETA),
                      SPELLINGS)
    fraction_key, fraction = agreed(cfg, stated(cfg, dicts, "rotary_pct", "partial_rotary_factor"),
                                    ("rotary_pct", HF_ROTARY_PCT), SPELLINGS)
    # what 4.57 writes beside rotary_emb_base and rotary_pct (its own copies); neither version runs them
    for key, value in (("rope_theta", theta), ("partial_rotary_factor", fraction)):
        if cfg.get(key, value) != value:
            cfg.fail(key, cfg.get(key), f"transformers ignores it for gpt_neox, which runs {value!r}")
    check_rotary_width(cfg, fraction_key, head_dim, fraction)
    return theta, fraction, agreed_scaling(cfg, dicts, max_seq_len, theta)


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> GPTNeoXConfig fields; ConversionError if GPT-NeoX cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len",
                "rope_theta", "rope_fraction", "rope_scaling", "tie_embeddings", "norm_eps", "qkv_bias",
                "attn_out_bias", "activation", "parallel_residual"},
        fixed={"position": "rope", "rope_layout": "halves", "norm": "layernorm", "norm_bias": True, "mlp": "plain",
               "mlp_bias": True},
        rules=[("n_kv_heads", c.n_kv_heads == c.n_heads, "GPT-NeoX attention is multi-head (n_kv_heads == n_heads)"),
               ("head_dim", c.head_dim * c.n_heads == c.d_model, "GPT-NeoX derives head_dim = d_model / n_heads"),
               ("attn_out_bias", c.qkv_bias == c.attn_out_bias,
                f"transformers' attention_bias puts biases on q, k, v and o together (qkv_bias={c.qkv_bias})"),
               ("rope_fraction", int(c.head_dim * c.rope_fraction) == c.rope_dim,
                f"transformers rotates int(head_dim * rotary_pct) = {int(c.head_dim * c.rope_fraction)} dims, "
                "which must be even"),
               activation_rule(c), rope_scaling_rule(c)],
    )
    return {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "intermediate_size": c.d_ff, "hidden_act": ACTIVATION_TO_HF[c.activation],
        "max_position_embeddings": c.max_seq_len, "layer_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings, "use_parallel_residual": c.parallel_residual,
        "attention_bias": c.qkv_bias, **rope_hf_fields(c),
        "bos_token_id": None, "eos_token_id": None,  # unknown to lmref; GPTNeoXConfig's 0 and 2 may mean nothing
    }


def rope_hf_fields(c: ModelConfig) -> dict:
    """The RoPE in 5.x's `rope_parameters` and in 4.x's `rotary_pct`, `rotary_emb_base` and
    `rope_scaling` (which 5.x reads first, its theta and fraction from the other two)."""
    rope = rope_to_hf(c)
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return {"rope_parameters": rope | {"partial_rotary_factor": c.rope_fraction},
            "rotary_pct": c.rope_fraction, "rotary_emb_base": rope["rope_theta"],
            "rope_scaling": None if scaling["rope_type"] == "default" else scaling}


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("gpt_neox.embed_in.weight", "embed.tokens")]
    # query_key_value [3 * d, d]: for each head, its q rows, then its k, then its v
    qkv = per_head_order((c.q_dim, c.kv_dim, c.kv_dim), c.n_heads)
    for i in range(c.n_layers):
        h, p = f"gpt_neox.layers.{i}", f"layers.{i}"
        table += [
            same(f"{h}.input_layernorm.weight", f"{p}.attn_norm.weight"),
            same(f"{h}.input_layernorm.bias", f"{p}.attn_norm.bias"),
            same(f"{h}.post_attention_layernorm.weight", f"{p}.mlp_norm.weight"),
            same(f"{h}.post_attention_layernorm.bias", f"{p}.mlp_norm.bias"),
            # nn.Linear weights [d_out, d_in]: `linear` stores the transpose of lmref's [d_in, d_out]
            Entry(f"{h}.attention.query_key_value.weight", (f"{p}.attn.wq", f"{p}.attn.wk", f"{p}.attn.wv"),
                  linear=True, perm=qkv),
            linear(f"{h}.attention.dense.weight", f"{p}.attn.wo"),
            linear(f"{h}.mlp.dense_h_to_4h.weight", f"{p}.mlp.w_up"),
            same(f"{h}.mlp.dense_h_to_4h.bias", f"{p}.mlp.b_up"),
            linear(f"{h}.mlp.dense_4h_to_h.weight", f"{p}.mlp.w_down"),
            same(f"{h}.mlp.dense_4h_to_h.bias", f"{p}.mlp.b_down"),
        ]
        if c.qkv_bias:  # attention_bias: both biases or neither
            table += [Entry(f"{h}.attention.query_key_value.bias", (f"{p}.attn.bq", f"{p}.attn.bk", f"{p}.attn.bv"),
                            perm=qkv),
                      same(f"{h}.attention.dense.bias", f"{p}.attn.bo")]
    table += [same("gpt_neox.final_layer_norm.weight", "final_norm.weight"),
              same("gpt_neox.final_layer_norm.bias", "final_norm.bias")]
    if not c.tie_embeddings:
        table.append(linear("embed_out.weight", "lm_head.weight"))  # nn.Linear(d, V): [V, d]
    return table
