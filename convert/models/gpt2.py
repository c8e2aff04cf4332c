"""GPT-2 (`GPT2LMHeadModel`, transformers models/gpt2, 5.23) <-> lmref.

Checkpoint keys (transformers `models/gpt2/modeling_gpt2.py`): `transformer.wte`, `transformer.wpe`,
`transformer.h.{i}.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}`,
`transformer.ln_f`, `lm_head` (absent when tied).  Every projection is a `Conv1D`, whose
weight is [d_in, d_out] like lmref's: no transposes, only the fused q|k|v split.
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
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "gpt2"
ARCHITECTURE = "GPT2LMHeadModel"
PREFIX = "transformer."  # GPT2PreTrainedModel.base_model_prefix; hub files omit it

# GPT2LMHeadModel: learned positions (wpe), LayerNorm with bias, Conv1D biases on every
# projection, GPT2MLP c_fc -> act -> c_proj; the head is tied unless tie_word_embeddings=False.
FEATURES = declare(
    "positions.learned", "norm.layernorm", "norm.bias", "block.pre_norm",
    "attn.qkv_bias", "attn.out_bias", "mlp.plain", "mlp.bias", *ACTIVATION_FEATURES, "head.tied",
)
# Causal-mask buffers of old checkpoints (`_keys_to_ignore_on_load_unexpected`): not weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# Submodules whose outputs are lmref's captured `layers.{i}.attn` / `.mlp` / `.out`.
LAYER_MODULES = {"attn": "transformer.h.{i}.attn.c_proj", "mlp": "transformer.h.{i}.mlp.c_proj",
                 "out": "transformer.h.{i}"}

IGNORED = frozenset({
    "resid_pdrop", "embd_pdrop", "attn_pdrop",  # dropout: off in eval
    # summary_*: the multiple-choice head of GPT2DoubleHeadsModel, not part of the LM
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "n_ctx",  # legacy duplicate of n_positions in hub files; transformers never reads it
    # reorder_and_upcast_attn: q k^T in float32 with the scale folded into k; the same math
    "reorder_and_upcast_attn",
})


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """GPT2Config fields (defaults: the GPT2Config class defaults) -> ModelConfig."""
    d, n_head = cfg.positive_integer("n_embd", 768), cfg.positive_integer("n_head", 12)
    if d % n_head:
        cfg.fail("n_head", n_head, f"n_embd ({d}) must be divisible by it (GPT-2's head_dim is n_embd / n_head)")
    n_inner = cfg.optional_positive_integer("n_inner")
    cfg.require("scale_attn_weights", True, (True,), "lmref always scales scores by head_dim^-0.5")
    cfg.require("scale_attn_by_inverse_layer_idx", False, (False,),
                "the extra 1 / (layer_idx + 1) score scaling has no lmref equivalent")
    cfg.require("add_cross_attention", False, (False,), "lmref models are decoder-only, without cross-attention")
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=cfg.positive_integer("vocab_size", 50257), d_model=d,
        n_layers=cfg.positive_integer("n_layer", 12), n_heads=n_head, n_kv_heads=n_head, head_dim=d // n_head,
        d_ff=n_inner if n_inner is not None else 4 * d,  # GPT2Block: n_inner or 4 * hidden
        max_seq_len=cfg.positive_integer("n_positions", 1024), position="learned",
        tie_embeddings=cfg.flag("tie_word_embeddings", True),
        norm="layernorm", norm_eps=cfg.number("layer_norm_epsilon", 1e-5), norm_bias=True,
        qkv_bias=True, attn_out_bias=True,
        mlp="plain", activation=cfg.activation("activation_function", "gelu_new"), mlp_bias=True,
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> GPT2Config fields; ConversionError if GPT-2 cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "max_seq_len", "tie_embeddings", "norm_eps", "activation"},
        fixed={"position": "learned", "norm": "layernorm", "norm_bias": True, "qkv_bias": True,
               "attn_out_bias": True, "mlp": "plain", "mlp_bias": True},
        rules=[("n_kv_heads", c.n_kv_heads == c.n_heads, "GPT-2 attention is multi-head (n_kv_heads == n_heads)"),
               ("head_dim", c.head_dim * c.n_heads == c.d_model, "GPT-2 derives head_dim = d_model / n_heads"),
               activation_rule(c)],
    )
    return {
        "vocab_size": c.vocab_size, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
        "n_inner": None if c.d_ff == 4 * c.d_model else c.d_ff,  # None: GPT2Config's default 4 * n_embd
        "n_positions": c.max_seq_len, "activation_function": ACTIVATION_TO_HF[c.activation],
        "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False,
        "bos_token_id": None, "eos_token_id": None,  # unknown to lmref; GPT2Config's 50256 may be out of vocab
    }


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("transformer.wte.weight", "embed.tokens"), same("transformer.wpe.weight", "embed.positions")]
    for i in range(c.n_layers):
        h, p = f"transformer.h.{i}", f"layers.{i}"
        table += [
            same(f"{h}.ln_1.weight", f"{p}.attn_norm.weight"), same(f"{h}.ln_1.bias", f"{p}.attn_norm.bias"),
            # c_attn is one Conv1D d -> 3d; GPT2Attention splits its output with .split(d) into
            # q | k | v, so its columns are wq's, then wk's, then wv's (and so is its bias).
            Entry(f"{h}.attn.c_attn.weight", (f"{p}.attn.wq", f"{p}.attn.wk", f"{p}.attn.wv")),
            Entry(f"{h}.attn.c_attn.bias", (f"{p}.attn.bq", f"{p}.attn.bk", f"{p}.attn.bv")),
            same(f"{h}.attn.c_proj.weight", f"{p}.attn.wo"), same(f"{h}.attn.c_proj.bias", f"{p}.attn.bo"),
            same(f"{h}.ln_2.weight", f"{p}.mlp_norm.weight"), same(f"{h}.ln_2.bias", f"{p}.mlp_norm.bias"),
            same(f"{h}.mlp.c_fc.weight", f"{p}.mlp.w_up"), same(f"{h}.mlp.c_fc.bias", f"{p}.mlp.b_up"),
            same(f"{h}.mlp.c_proj.weight", f"{p}.mlp.w_down"), same(f"{h}.mlp.c_proj.bias", f"{p}.mlp.b_down"),
        ]
    table += [same("transformer.ln_f.weight", "final_norm.weight"), same("transformer.ln_f.bias", "final_norm.bias")]
    if not c.tie_embeddings:
        table.append(linear("lm_head.weight", "lm_head.weight"))  # nn.Linear(d, V): [V, d]
    return table
