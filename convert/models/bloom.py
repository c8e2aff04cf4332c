"""BLOOM (`BloomForCausalLM`, transformers models/bloom, 5.23; bigscience/bloom-*) <-> lmref.

Checkpoint keys (transformers `models/bloom/modeling_bloom.py`): `transformer.word_embeddings`,
`transformer.word_embeddings_layernorm`, `transformer.h.{i}.{input_layernorm,
self_attention.query_key_value, self_attention.dense, post_attention_layernorm,
mlp.dense_h_to_4h, mlp.dense_4h_to_h}`, `transformer.ln_f`; `lm_head` only when untied.  The
Hub's files name them without the `transformer.` prefix (`h.0.input_layernorm.weight`), which
the reader adds back (convert/hf.py `_normalise_keys`).  Projections are `nn.Linear` with bias
([d_out, d_in]); q, k and v are one tensor fused per head: `BloomAttention._reshape` views its
output [B, S, n_head, 3, head_dim], so for each head its q rows, then its k, then its v
(`per_head_order`, as GPT-NeoX's).

transformers hard-codes what lmref has as knobs: ALiBi with the Press et al. slopes and max bias
8 (`_get_alibi_slopes`), multi-head attention, LayerNorms with weight and bias after the token
embedding and around each sublayer, biases on every projection, an MLP 4 * hidden_size wide,
and `bloom_gelu_forward`, the tanh GELU with sqrt(2/pi) written 0.79788456 (lmref's
"gelu_tanh_truncated"; BloomConfig has no activation field).  BloomConfig holds no context
length (ALiBi has no table): lmref's `max_seq_len` is written as `seq_length`
(Megatron-DeepSpeed's `--seq-length`), which transformers keeps and never reads, and a file
without it (the Hub's) reads as BLOOM's trained context, 2048.  `pretraining_tp` alone is
never used; with `slow_but_exact` it makes transformers drop two biases, so that pair is
refused (`slow_but_exact_tp`).
"""

from __future__ import annotations

from lmref.convert.fields import HFConfig, check_expressible
from lmref.convert.layout import Entry, linear, per_head_order, same
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "bloom"
ARCHITECTURE = "BloomForCausalLM"
PREFIX = "transformer."  # BloomPreTrainedModel.base_model_prefix

# BloomForCausalLM: ALiBi, the word_embeddings_layernorm, LayerNorms with bias, pre-norm
# BloomBlock, biases on query_key_value and dense, BloomMLP with biases and bloom_gelu_forward,
# a tied head (an untied one without bias when tie_word_embeddings is false).
FEATURES = declare(
    "positions.alibi", "embedding.norm", "norm.layernorm", "norm.bias", "block.pre_norm", "attn.qkv_bias",
    "attn.out_bias", "mlp.plain", "mlp.bias", "activation.gelu_tanh_truncated", "head.tied",
)
IGNORED_SUFFIXES = ()
# BloomBlock adds self_attention.dense's and mlp.dense_4h_to_h's outputs (`dropout_add`, off in eval).
LAYER_MODULES = {"attn": "transformer.h.{i}.self_attention.dense", "mlp": "transformer.h.{i}.mlp.dense_4h_to_h",
                 "out": "transformer.h.{i}"}

HF_ALIBI_MAX_BIAS = 8.0  # _get_alibi_slopes: 2^(-8h/n), the Press et al. slopes
HF_EXPANSION = 4  # BloomMLP: nn.Linear(hidden_size, 4 * hidden_size)
TRAINED_CONTEXT = 2048  # the model cards' sequence length, for files without seq_length

IGNORED = frozenset({
    "hidden_dropout", "attention_dropout",  # dropout: off in eval
    # Megatron-DeepSpeed's kernel flags, kept in the Hub's files and never read by transformers:
    # fused masked softmax (in float32), bias + dropout fusion, where a projection's bias is added
    "masked_softmax_fusion", "attention_softmax_in_fp32", "bias_dropout_fusion", "skip_bias_add",
    "skip_bias_add_qkv",
    # offset_alibi shifts every ALiBi distance by one constant: the same per row for all keys,
    # which softmax ignores (and transformers never reads it)
    "offset_alibi",
    "unk_token_id",  # a token id, like bos / eos / pad
})


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """BloomConfig fields (defaults: the BloomConfig class defaults) -> ModelConfig."""
    # BloomConfig.__post_init__ reads the legacy n_embed as hidden_size; attribute_map spells
    # num_hidden_layers and num_attention_heads as n_layer and n_head
    d = cfg.positive_either(("hidden_size", "n_embed"), 64)
    n_layers = cfg.positive_either(("n_layer", "num_hidden_layers"), 2)
    n_heads = cfg.positive_either(("n_head", "num_attention_heads"), 8)
    if d % n_heads:
        cfg.fail("num_attention_heads" if "num_attention_heads" in cfg.data else "n_head", n_heads,
                 f"must be a positive integer dividing hidden_size ({d!r}): BloomAttention's head_dim is "
                 "hidden_size / n_head")
    cfg.require("apply_residual_connection_post_layernorm", False, (False,),
                "it makes each sublayer's LayerNorm output the residual, which lmref's blocks cannot express")
    slow_but_exact_tp(cfg)
    cfg.require("n_inner", None, (None, HF_EXPANSION * d),
                f"transformers never reads it: BloomMLP is 4 * hidden_size = {HF_EXPANSION * d} wide")
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=cfg.positive_integer("vocab_size", 250880), d_model=d,
        n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_heads, head_dim=d // n_heads, d_ff=HF_EXPANSION * d,
        max_seq_len=cfg.positive_integer("seq_length", TRAINED_CONTEXT), position="alibi",
        alibi_max_bias=HF_ALIBI_MAX_BIAS,
        embedding_norm=True, tie_embeddings=cfg.flag("tie_word_embeddings", True),
        norm="layernorm", norm_eps=cfg.number("layer_norm_epsilon", 1e-5), norm_bias=True,
        qkv_bias=True, attn_out_bias=True, mlp="plain", activation="gelu_tanh_truncated", mlp_bias=True,
    )


def slow_but_exact_tp(cfg: HFConfig) -> None:
    """pretraining_tp alone changes nothing; with slow_but_exact and pretraining_tp > 1,
    transformers 5.23 computes `dense` and `dense_4h_to_h` as a sum of `F.linear` slices
    without their biases (`BloomAttention.forward`, `BloomMLP.forward`), so another model than
    the checkpoint's (Megatron-DeepSpeed adds those biases after the slices' sum): refused."""
    tp = cfg.positive_integer("pretraining_tp", 1)
    if cfg.flag("slow_but_exact", False) and tp > 1:
        cfg.fail("slow_but_exact", True, f"with pretraining_tp={tp} transformers sums F.linear slices of dense and "
                 "dense_4h_to_h without their biases, dropping the biases of the checkpoint")


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> BloomConfig fields; ConversionError if BLOOM cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len",
                "tie_embeddings", "norm_eps"},
        fixed={"position": "alibi", "alibi_max_bias": HF_ALIBI_MAX_BIAS, "embedding_norm": True, "norm": "layernorm",
               "norm_bias": True, "qkv_bias": True, "attn_out_bias": True, "mlp": "plain",
               "activation": "gelu_tanh_truncated", "mlp_bias": True},
        rules=[("n_kv_heads", c.n_kv_heads == c.n_heads, "BLOOM attention is multi-head (n_kv_heads == n_heads)"),
               ("head_dim", c.head_dim * c.n_heads == c.d_model, "BLOOM derives head_dim = d_model / n_heads"),
               ("d_ff", c.d_ff == HF_EXPANSION * c.d_model,
                f"transformers' BloomMLP is 4 * d_model = {HF_EXPANSION * c.d_model} wide")],
    )
    return {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
        "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
        "apply_residual_connection_post_layernorm": False, "pretraining_tp": 1, "slow_but_exact": False,
        "seq_length": c.max_seq_len,  # kept by transformers, never read (module docstring)
        "bos_token_id": None, "eos_token_id": None,  # unknown to lmref; BloomConfig's 1 and 2 may mean nothing
    }


def entries(c: ModelConfig) -> list[Entry]:
    t = "transformer"
    table = [same(f"{t}.word_embeddings.weight", "embed.tokens"),
             same(f"{t}.word_embeddings_layernorm.weight", "embed.norm.weight"),
             same(f"{t}.word_embeddings_layernorm.bias", "embed.norm.bias")]
    # query_key_value [3 * d, d]: for each head, its q rows, then its k, then its v
    qkv = per_head_order((c.q_dim, c.kv_dim, c.kv_dim), c.n_heads)
    for i in range(c.n_layers):
        h, p = f"{t}.h.{i}", f"layers.{i}"
        table += [
            same(f"{h}.input_layernorm.weight", f"{p}.attn_norm.weight"),
            same(f"{h}.input_layernorm.bias", f"{p}.attn_norm.bias"),
            # nn.Linear weights [d_out, d_in]: `linear` stores the transpose of lmref's [d_in, d_out]
            Entry(f"{h}.self_attention.query_key_value.weight", (f"{p}.attn.wq", f"{p}.attn.wk", f"{p}.attn.wv"),
                  linear=True, perm=qkv),
            Entry(f"{h}.self_attention.query_key_value.bias", (f"{p}.attn.bq", f"{p}.attn.bk", f"{p}.attn.bv"),
                  perm=qkv),
            linear(f"{h}.self_attention.dense.weight", f"{p}.attn.wo"),
            same(f"{h}.self_attention.dense.bias", f"{p}.attn.bo"),
            same(f"{h}.post_attention_layernorm.weight", f"{p}.mlp_norm.weight"),
            same(f"{h}.post_attention_layernorm.bias", f"{p}.mlp_norm.bias"),
            linear(f"{h}.mlp.dense_h_to_4h.weight", f"{p}.mlp.w_up"),
            same(f"{h}.mlp.dense_h_to_4h.bias", f"{p}.mlp.b_up"),
            linear(f"{h}.mlp.dense_4h_to_h.weight", f"{p}.mlp.w_down"),
            same(f"{h}.mlp.dense_4h_to_h.bias", f"{p}.mlp.b_down"),
        ]
    table += [same(f"{t}.ln_f.weight", "final_norm.weight"), same(f"{t}.ln_f.bias", "final_norm.bias")]
    if not c.tie_embeddings:
        table.append(linear("lm_head.weight", "lm_head.weight"))  # nn.Linear(d, V, bias=False): [V, d]
    return table
