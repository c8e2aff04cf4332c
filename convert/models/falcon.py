"""Falcon (`FalconForCausalLM`, transformers models/falcon, 5.23; tiiuae/falcon-7b, falcon-40b) <-> lmref.

Checkpoint keys (transformers `models/falcon/modeling_falcon.py`): `transformer.word_embeddings`,
`transformer.h.{i}.{<norms>, self_attention.query_key_value, self_attention.dense,
mlp.dense_h_to_4h, mlp.dense_4h_to_h}`, `transformer.ln_f`, `lm_head` (absent when tied).
Projections are `FalconLinear` (an `nn.Linear`, [d_out, d_in]); `bias` puts a bias on all four
or none; the LayerNorms always have one, lm_head never.

The block (`FalconDecoderLayer.__init__` and `forward`; `num_ln_in_parallel_attn` null means 2
in the new architecture) and its norms, which is all lmref maps:

    new_decoder_architecture  parallel_attn  num_ln  block                     norms
    false                     true           any     x + attn(n(x)) + mlp(n(x))  input_layernorm
    false                     false          any     sequential pre-norm        input_layernorm,
                                                                                post_attention_layernorm
    true                      true           2/null  x + attn(n1(x)) + mlp(n2(x))  ln_attn, ln_mlp
    true                      true           1       x + attn(n(x)) + mlp(n(x))  input_layernorm

Every other combination fails in transformers (a missing `ln_attn` / `input_layernorm`, or an
unbound `mlp_layernorm_out`), and is refused.  The KV heads (`FalconAttention.__init__`):
the new architecture has `num_kv_heads`; the old one 1 with `multi_query`, else
`num_kv_heads`, which must then be the heads (`key_layer.reshape(..., num_kv_heads, ...)` of
num_heads heads fails otherwise).  `query_key_value` holds, for each KV group, the group's q
heads, then its k head, then its v head (`_split_heads`: new architecture
`view(..., num_kv_heads, heads // num_kv_heads + 2, head_dim)`; multi-query `view(..., heads + 2,
head_dim)`, one group; otherwise `view(..., heads, 3, head_dim)`, one group per head), so
`per_head_order` over the KV groups reads all three.

RoPE (`FalconRotaryEmbedding`, LLaMA's) rotates the whole head in halves; an interleaved
config is exported with q's and k's columns permuted (convert/rope.py).  `alibi` is refused
(`build_alibi_tensor` rounds the slopes to bfloat16 and FalconModel divides the bias by
sqrt(head_dim): not lmref's positions.alibi).
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
from lmref.convert.models.llama import legacy_rope_fields
from lmref.convert.rope import (
    ROPE_FEATURES,
    rope_columns_permutation,
    rope_from_hf,
    rope_scaling_rule,
    rope_to_hf,
)
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "falcon"
ARCHITECTURE = "FalconForCausalLM"
PREFIX = "transformer."  # FalconPreTrainedModel.base_model_prefix

FEATURES = declare(
    *ROPE_FEATURES, "norm.layernorm", "norm.bias", "block.pre_norm", "block.parallel", "block.shared_norm",
    "attn.qkv_bias", "attn.out_bias", "mlp.plain", "mlp.bias", *ACTIVATION_FEATURES, "head.tied",
)
# No buffers in the files: FalconRotaryEmbedding's inv_freq is non-persistent, and so was the
# RW code's (tiiuae's modelling_RW.py).
IGNORED_SUFFIXES = ()
# self_attention.dense and mlp.dense_4h_to_h: what each branch adds (the dropouts are off in eval).
# The parallel FalconDecoderLayer then adds the attention output into the MLP's output tensor in
# place (`mlp_output += attention_output`): a capture must copy dense_4h_to_h's output, not keep it.
LAYER_MODULES = {"attn": "transformer.h.{i}.self_attention.dense", "mlp": "transformer.h.{i}.mlp.dense_4h_to_h",
                 "out": "transformer.h.{i}"}

# The class defaults of FalconConfig (transformers models/falcon/configuration_falcon.py, 5.23
# and 4.57 alike).
DEFAULTS = dict(vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
                num_ln_in_parallel_attn=None, layer_norm_epsilon=1e-5, num_kv_heads=None, alibi=False,
                new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
                max_position_embeddings=2048, ffn_hidden_size=None, activation="gelu", tie_word_embeddings=True)
# The RW keys of tiiuae's first files (model_type "RefinedWeb"), which FalconConfig never reads
# (it has no attribute_map; only `n_embed` is popped, as hidden_size): each must state what
# transformers runs.
LEGACY_COPIES = {"n_head": "num_attention_heads", "n_layer": "num_hidden_layers"}

IGNORED = frozenset({
    "hidden_dropout", "attention_dropout",  # dropout: off in eval
    "classifier_dropout",  # FalconForTokenClassification's head, not the LM
})


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """FalconConfig fields (defaults: the FalconConfig class defaults) -> ModelConfig."""
    d = cfg.positive_either(("hidden_size", "n_embed"), DEFAULTS["hidden_size"])
    n_heads, n_layers, vocab, max_seq_len = (cfg.positive_integer(key, DEFAULTS[key]) for key in (
        "num_attention_heads", "num_hidden_layers", "vocab_size", "max_position_embeddings"))
    if d % n_heads:
        cfg.fail("num_attention_heads", n_heads, f"hidden_size ({d}) must be divisible by it "
                 "(FalconAttention's head_dim is hidden_size // heads, and it raises otherwise)")
    _check_legacy(cfg, {"num_attention_heads": n_heads, "num_hidden_layers": n_layers})
    cfg.require("alibi", DEFAULTS["alibi"], (False,), "transformers' Falcon ALiBi rounds its slopes to bfloat16 and "
                "divides the bias by sqrt(head_dim) (build_alibi_tensor, FalconModel.forward): not lmref's ALiBi")
    cfg.require("apply_residual_connection_post_layernorm", False, (False,),
                "the RW code's option, which transformers' Falcon never reads (its residual is the block input)")
    parallel, shared = _block(cfg)
    n_kv = _kv_heads(cfg, n_heads)
    theta, scaling = rope_from_hf(cfg, max_seq_len)
    bias = cfg.flag("bias", DEFAULTS["bias"])  # FalconLinear: query_key_value, dense, both MLP projections
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=vocab, d_model=d,
        n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, head_dim=d // n_heads, d_ff=_ffn(cfg, d),
        max_seq_len=max_seq_len, position="rope", rope_theta=theta, rope_scaling=scaling,
        tie_embeddings=cfg.flag("tie_word_embeddings", DEFAULTS["tie_word_embeddings"]),
        norm="layernorm", norm_eps=cfg.number("layer_norm_epsilon", DEFAULTS["layer_norm_epsilon"]),
        norm_bias=True, qkv_bias=bias, attn_out_bias=bias, mlp="plain", mlp_bias=bias,
        activation=cfg.activation("activation", DEFAULTS["activation"]),  # get_activation: ACT2FN
        parallel_residual=parallel, shared_attn_norm=shared,
    )


def _check_legacy(cfg: HFConfig, read: dict) -> None:
    """The RW keys n_head and n_layer, which transformers ignores: they must equal what it runs."""
    for old, key in LEGACY_COPIES.items():
        if cfg.get(old, read[key]) != read[key]:
            cfg.fail(old, cfg.get(old), f"transformers' FalconConfig never reads it and runs {key}={read[key]!r}")


def _block(cfg: HFConfig) -> tuple[bool, bool]:
    """(parallel_residual, shared_attn_norm) of FalconDecoderLayer (the module docstring's table)."""
    new = cfg.get("new_decoder_architecture", DEFAULTS["new_decoder_architecture"])
    parallel = cfg.get("parallel_attn", DEFAULTS["parallel_attn"])
    n_ln = cfg.get("num_ln_in_parallel_attn", DEFAULTS["num_ln_in_parallel_attn"])
    for key, value in (("new_decoder_architecture", new), ("parallel_attn", parallel)):
        if not isinstance(value, bool):
            cfg.fail(key, value, "expected true or false")
    if n_ln not in (None, 1, 2) or isinstance(n_ln, bool):
        cfg.fail("num_ln_in_parallel_attn", n_ln, "expected 1, 2 or null")
    if not new:
        if parallel and n_ln == 2:
            cfg.fail("num_ln_in_parallel_attn", n_ln, "without new_decoder_architecture, FalconDecoderLayer builds "
                     "ln_attn and ln_mlp but runs input_layernorm, and fails")
        return parallel, parallel  # one input_layernorm for both branches, or the sequential layer
    if not parallel:
        cfg.fail("parallel_attn", parallel, "with new_decoder_architecture, FalconDecoderLayer builds the "
                 "sequential layer's norms but runs the parallel one's, and fails")
    return True, n_ln == 1


def _kv_heads(cfg: HFConfig, n_heads: int) -> int:
    """The KV heads FalconAttention runs (module docstring); `n_head_kv` (RW) must agree."""
    new = cfg.get("new_decoder_architecture", DEFAULTS["new_decoder_architecture"])
    multi_query = cfg.get("multi_query", DEFAULTS["multi_query"])
    given = cfg.get("num_kv_heads", DEFAULTS["num_kv_heads"])
    stated = n_heads if given is None else given  # FalconConfig.__post_init__
    if new:
        n_kv = cfg.checked_positive("num_kv_heads", stated)
        if n_heads % n_kv:
            cfg.fail("num_kv_heads", n_kv, f"num_attention_heads ({n_heads}) must be a multiple of it (_split_heads "
                     "views query_key_value as num_kv_heads groups of heads // num_kv_heads + 2 heads)")
    elif multi_query:
        # ignored (FalconAttention: 1 KV head); save_pretrained writes num_attention_heads there
        if stated not in (1, n_heads):
            cfg.fail("num_kv_heads", given, "multi_query runs 1 KV head and transformers ignores this field; "
                     f"lmref accepts only 1, {n_heads} (num_attention_heads) or null")
        n_kv = 1
    else:
        if stated != n_heads:
            cfg.fail("num_kv_heads", given, f"without multi_query or new_decoder_architecture, Falcon's attention is "
                     f"multi-head ({n_heads} heads) and fails with fewer KV heads")
        n_kv = n_heads
    if cfg.get("n_head_kv", n_kv) != n_kv:
        cfg.fail("n_head_kv", cfg.get("n_head_kv"), f"transformers' FalconConfig never reads it and runs {n_kv} "
                 "KV head(s)")
    return n_kv


def _ffn(cfg: HFConfig, d: int) -> int:
    """ffn_hidden_size, null: 4 * hidden_size.  5.23 multiplies the hidden_size it ran (n_embed
    when given); 4.57 the `hidden_size` argument, before n_embed replaces it: a file with
    n_embed, no ffn_hidden_size and another hidden_size is two models."""
    ffn = cfg.get("ffn_hidden_size", DEFAULTS["ffn_hidden_size"])
    if ffn is not None:
        return cfg.checked_positive("ffn_hidden_size", ffn)
    v4_hidden = cfg.get("hidden_size", DEFAULTS["hidden_size"])
    if v4_hidden != d:
        cfg.fail("ffn_hidden_size", None, f"null means 4 * n_embed = {4 * d} in transformers 5.x and "
                 f"4 * hidden_size = {4 * v4_hidden} in 4.x")
    return 4 * d


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> FalconConfig fields; ConversionError if Falcon cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len",
                "rope_theta", "rope_scaling", "rope_layout", "tie_embeddings", "norm_eps", "qkv_bias",
                "attn_out_bias", "mlp_bias", "activation", "parallel_residual", "shared_attn_norm"},
        fixed={"position": "rope", "norm": "layernorm", "norm_bias": True, "mlp": "plain"},
        rules=[("head_dim", c.head_dim * c.n_heads == c.d_model, "Falcon derives head_dim = d_model / n_heads"),
               ("mlp_bias", c.qkv_bias == c.attn_out_bias == c.mlp_bias, "transformers' bias puts biases on "
                f"query_key_value, dense and the MLP together (qkv_bias={c.qkv_bias}, "
                f"attn_out_bias={c.attn_out_bias}, mlp_bias={c.mlp_bias})"),
               ("n_kv_heads", c.parallel_residual or c.n_kv_heads in (1, c.n_heads),
                "Falcon's sequential layer (the old architecture) has 1 KV head or n_heads"),
               activation_rule(c), rope_scaling_rule(c)],
    )
    rope = rope_to_hf(c)
    return {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, **_architecture_fields(c), "ffn_hidden_size": c.d_ff,
        "activation": ACTIVATION_TO_HF[c.activation], "bias": c.qkv_bias, "alibi": False,
        "max_position_embeddings": c.max_seq_len, "layer_norm_epsilon": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings, "rope_parameters": rope, **legacy_rope_fields(rope),
        "bos_token_id": None, "eos_token_id": None,  # unknown to lmref; FalconConfig's 11 may be out of vocab
    }


def _architecture_fields(c: ModelConfig) -> dict:
    """The block and the KV heads: the old architecture where it can say them (falcon-7b's
    multi-query, multi-head, the sequential layer), else the new one.  The fields a layout
    ignores keep the values transformers itself saves for the Hub's files (null
    num_kv_heads, read as num_attention_heads; multi_query true; null num_ln_in_parallel_attn,
    2 in the new architecture), so that both read the same."""
    old = not c.parallel_residual or (c.shared_attn_norm and c.n_kv_heads in (1, c.n_heads))
    if old:
        return {"new_decoder_architecture": False, "parallel_attn": c.parallel_residual,
                "multi_query": c.n_kv_heads == 1 < c.n_heads, "num_kv_heads": None, "num_ln_in_parallel_attn": None}
    return {"new_decoder_architecture": True, "parallel_attn": True, "multi_query": True,
            "num_kv_heads": c.n_kv_heads, "num_ln_in_parallel_attn": 1 if c.shared_attn_norm else None}


def qkv_order(c: ModelConfig) -> tuple[int, ...] | None:
    """query_key_value's column order: per KV group, its q heads, k head and v head (module
    docstring), after the RoPE layout's q and k permutations (None: the concatenation as is)."""
    group = per_head_order((c.q_dim, c.kv_dim, c.kv_dim), c.n_kv_heads)
    q_perm = rope_columns_permutation(c.n_heads, c.head_dim, c.rope_layout)
    if q_perm is None:
        return None if group == tuple(range(len(group))) else group
    k_perm = rope_columns_permutation(c.n_kv_heads, c.head_dim, c.rope_layout)
    rope = (*q_perm, *(c.q_dim + j for j in k_perm), *range(c.q_dim + c.kv_dim, c.q_dim + 2 * c.kv_dim))
    return tuple(rope[j] for j in group)  # permute by the RoPE layout, then group


def norm_entries(c: ModelConfig, h: str, p: str) -> list[Entry]:
    """Layer norms under the names FalconDecoderLayer gives them (module docstring)."""
    if c.shared_attn_norm:
        names = {"input_layernorm": "attn_norm"}
    elif c.parallel_residual:
        names = {"ln_attn": "attn_norm", "ln_mlp": "mlp_norm"}
    else:
        names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
    return [same(f"{h}.{hf}.{part}", f"{p}.{ours}.{part}") for hf, ours in names.items() for part in ("weight", "bias")]


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("transformer.word_embeddings.weight", "embed.tokens")]
    qkv = qkv_order(c)
    for i in range(c.n_layers):
        h, p = f"transformer.h.{i}", f"layers.{i}"
        # FalconLinear weights [d_out, d_in]: `linear` stores the transpose of lmref's [d_in, d_out]
        table += norm_entries(c, h, p) + [
            Entry(f"{h}.self_attention.query_key_value.weight", (f"{p}.attn.wq", f"{p}.attn.wk", f"{p}.attn.wv"),
                  linear=True, perm=qkv),
            linear(f"{h}.self_attention.dense.weight", f"{p}.attn.wo"),
            linear(f"{h}.mlp.dense_h_to_4h.weight", f"{p}.mlp.w_up"),
            linear(f"{h}.mlp.dense_4h_to_h.weight", f"{p}.mlp.w_down"),
        ]
        if c.qkv_bias:  # `bias`: every FalconLinear of the layer
            table += [Entry(f"{h}.self_attention.query_key_value.bias", (f"{p}.attn.bq", f"{p}.attn.bk",
                                                                            f"{p}.attn.bv"), perm=qkv),
                      same(f"{h}.self_attention.dense.bias", f"{p}.attn.bo"),
                      same(f"{h}.mlp.dense_h_to_4h.bias", f"{p}.mlp.b_up"),
                      same(f"{h}.mlp.dense_4h_to_h.bias", f"{p}.mlp.b_down")]
    table += [same("transformer.ln_f.weight", "final_norm.weight"), same("transformer.ln_f.bias", "final_norm.bias")]
    if not c.tie_embeddings:
        table.append(linear("lm_head.weight", "lm_head.weight"))  # nn.Linear(d, V, bias=False): [V, d]
    return table
