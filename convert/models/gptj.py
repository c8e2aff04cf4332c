"""GPT-J (`GPTJForCausalLM`, transformers models/gptj, 5.23; EleutherAI/gpt-j-6b) <-> lmref.

Checkpoint keys (transformers `models/gptj/modeling_gptj.py`): `transformer.wte`,
`transformer.h.{i}.{ln_1, attn.{q,k,v,out}_proj, mlp.fc_in, mlp.fc_out}`, `transformer.ln_f`,
`lm_head` (weight and bias; the weight is absent when tied, the bias never is).  Every
projection is an `nn.Linear`, stored [d_out, d_in]: the transpose of lmref's [d_in, d_out];
q, k, v and out_proj have no bias (`bias=False`), fc_in, fc_out and lm_head do.

What GPTJConfig does not say, and transformers hard-codes:

- `GPTJBlock`: h + attn(ln_1(h)) + mlp(ln_1(h)), one LayerNorm for both branches (lmref's
  parallel_residual with shared_attn_norm).
- RoPE (`create_sinusoidal_positions`, `rotate_every_two`, `apply_rotary_pos_emb`) on the
  first `rotary_dim` dims of each head, in interleaved pairs (2i, 2i+1), frequencies
  1 / 10000^(2i / rotary_dim): theta 10000 is a literal, and no field scales it.  lmref's
  rope_fraction is rotary_dim / head_dim.  A "halves" config is written with each head's
  first rope_dim q, k columns reordered for the interleaved rotation (`rope_columns`), the
  same function, read back as "interleaved" (the mechanism of convert/models/llama4_text.py).
- `GPTJAttention._attn`: q and k cast to float32, scores q k^T / sqrt(head_dim) (lmref's
  head_dim^-0.5), multi-head, head_dim = n_embd / n_head (a remainder is a ValueError).
- `GPTJForCausalLM.lm_head = nn.Linear(n_embd, vocab_size)`: always a bias, tied or not
  (`_tied_weights_keys` ties the weight only), so lm_head_bias is always true.
"""

from __future__ import annotations

import numpy as np
from lmref.convert.fields import (
    ACTIVATION_FEATURES,
    ACTIVATION_TO_HF,
    HFConfig,
    activation_rule,
    check_expressible,
)
from lmref.convert.layout import Entry, linear, same
from lmref.convert.rope import rope_columns_permutation
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "gptj"
ARCHITECTURE = "GPTJForCausalLM"
PREFIX = "transformer."  # GPTJPreTrainedModel.base_model_prefix

FEATURES = declare(
    "positions.rope", "rope.interleaved", "rope.partial", "norm.layernorm", "norm.bias", "block.pre_norm",
    "block.parallel", "block.shared_norm", "mlp.plain", "mlp.bias", *ACTIVATION_FEATURES, "head.tied", "head.bias",
)
# Causal-mask buffers that older transformers' GPTJAttention registered (`bias`, `masked_bias`)
# and checkpoints of that time stored; its GPTJForCausalLM listed them in
# `_keys_to_ignore_on_load_unexpected`: not weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
# out_proj: the attention branch before the residual sum (resid_dropout is off in eval);
# fc_out: the MLP branch (GPTJMLP's dropout after it is off too); the block: h after the sum.
LAYER_MODULES = {"attn": "transformer.h.{i}.attn.out_proj", "mlp": "transformer.h.{i}.mlp.fc_out",
                 "out": "transformer.h.{i}"}
HF_THETA = 10_000.0  # create_sinusoidal_positions: `10000 ** (arange(0, dim, 2) / dim)`

# The class defaults of GPTJConfig (transformers models/gptj/configuration_gptj.py, 5.23).
DEFAULTS = dict(vocab_size=50400, n_positions=2048, n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, n_inner=None,
                activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=False)

IGNORED = frozenset({
    "resid_pdrop", "embd_pdrop", "attn_pdrop",  # dropout: off in eval
    "gradient_checkpointing",  # a training memory option of old configs (gpt-j-6b's says false)
    # summary_*: GPT-2's multiple-choice head, copied into gpt-j-6b's config.json; GPT-J has no such head
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
})


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """GPTJConfig fields (defaults: the GPTJConfig class defaults) -> ModelConfig."""
    d, n_head = cfg.positive_integer("n_embd", DEFAULTS["n_embd"]), cfg.positive_integer("n_head", DEFAULTS["n_head"])
    if d % n_head:
        cfg.fail("n_head", n_head, f"n_embd ({d}) must be divisible by it (GPT-J's head_dim is n_embd / n_head)")
    # gpt-j-6b's legacy flags: transformers never reads them, and always rotates and scales
    cfg.require("rotary", True, (True,), "transformers' GPT-J always applies RoPE (it never reads the field)")
    cfg.require("scale_attn_weights", True, (True,),
                "transformers' GPT-J always divides the scores by sqrt(head_dim) (it never reads the field)")
    cfg.require("rope_theta", HF_THETA, (HF_THETA,),
                "transformers' GPT-J never reads it: create_sinusoidal_positions hard-codes theta 10000")
    rotary_dim = _rotary_dim(cfg, d // n_head, n_head)
    n_inner = cfg.optional_positive_integer("n_inner", DEFAULTS["n_inner"])
    vocab, n_layer, n_positions = (cfg.positive_integer(key, DEFAULTS[key]) for key in (
        "vocab_size", "n_layer", "n_positions"))
    config = ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=vocab, d_model=d,
        n_layers=n_layer, n_heads=n_head, n_kv_heads=n_head, head_dim=d // n_head,
        d_ff=n_inner if n_inner is not None else 4 * d,  # GPTJBlock: n_inner or 4 * n_embd
        max_seq_len=n_positions, position="rope", rope_theta=HF_THETA,
        rope_layout="interleaved", rope_fraction=rotary_dim / (d // n_head),
        tie_embeddings=cfg.flag("tie_word_embeddings", DEFAULTS["tie_word_embeddings"]), lm_head_bias=True,
        norm="layernorm", norm_eps=cfg.number("layer_norm_epsilon", DEFAULTS["layer_norm_epsilon"]),
        norm_bias=True, mlp="plain", activation=cfg.activation("activation_function", DEFAULTS["activation_function"]),
        mlp_bias=True, parallel_residual=True, shared_attn_norm=True,
    )
    if config.rope_dim != rotary_dim:  # rope_dim = int(head_dim * rope_fraction) // 2 * 2 (spec/config.py)
        cfg.fail("rotary_dim", rotary_dim, f"lmref's rope_fraction {rotary_dim} / {d // n_head} = "
                 f"{config.rope_fraction!r} rotates {config.rope_dim} dims in float arithmetic, not {rotary_dim}")
    return config


def _rotary_dim(cfg: HFConfig, head_dim: int, n_head: int) -> int:
    """The dims of each head GPT-J rotates: a positive even `rotary_dim` <= head_dim; a null one
    only with one head (the whole head); every other value fails in transformers."""
    rotary = cfg.get("rotary_dim", DEFAULTS["rotary_dim"])
    if rotary is None:
        # 5.23's GPTJConfig refuses null (the field is an int).  4.x builds the table over
        # `self.rotary_dim or self.embed_dim` and rotates the whole head: n_embd wide, which
        # fits the head_dim-wide q and k only when n_head is 1.
        if n_head != 1:
            cfg.fail("rotary_dim", None, f"transformers 5.23 refuses null, and 4.x rotates with an n_embd-wide "
                     f"sinusoid table that fits a head only when n_head is 1 (here {n_head})")
        return head_dim
    # 0: `rotary_dim or embed_dim` builds an n_embd-wide table for zero rotated dims, which fails
    rotary = cfg.checked_positive("rotary_dim", rotary, "transformers' GPT-J fails on 0")
    if rotary % 2:
        cfg.fail("rotary_dim", rotary, "odd: GPT-J rotates pairs (2i, 2i+1), and its table of "
                 f"{(rotary + 1) // 2} frequencies covers {rotary + 1} dims, so transformers fails")
    if rotary > head_dim:
        cfg.fail("rotary_dim", rotary, f"more than head_dim ({head_dim}): transformers rotates only the head's "
                 f"{head_dim} dims with a {rotary}-wide table, and fails")
    return rotary


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> GPTJConfig fields; ConversionError if GPT-J cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len",
                "tie_embeddings", "norm_eps", "activation", "rope_fraction", "rope_layout"},
        fixed={"position": "rope", "rope_theta": HF_THETA, "norm": "layernorm", "norm_bias": True, "mlp": "plain",
               "mlp_bias": True, "lm_head_bias": True, "parallel_residual": True, "shared_attn_norm": True},
        rules=[("n_kv_heads", c.n_kv_heads == c.n_heads, "GPT-J attention is multi-head (n_kv_heads == n_heads)"),
               ("head_dim", c.head_dim * c.n_heads == c.d_model, "GPT-J derives head_dim = d_model / n_heads"),
               # rotary_dim counts dims: the fraction it reads back as must be this one
               ("rope_fraction", c.rope_fraction == c.rope_dim / c.head_dim,
                (f"GPT-J's rotary_dim would be {c.rope_dim} (the dims rope_fraction {c.rope_fraction!r} rotates), "
                 f"which reads back as rope_fraction {c.rope_dim} / {c.head_dim}")),
               activation_rule(c)],
    )
    return {
        "vocab_size": c.vocab_size, "n_embd": c.d_model, "n_layer": c.n_layers, "n_head": c.n_heads,
        "n_inner": None if c.d_ff == 4 * c.d_model else c.d_ff,  # None: GPTJConfig's default 4 * n_embd
        "n_positions": c.max_seq_len, "rotary_dim": c.rope_dim, "activation_function": ACTIVATION_TO_HF[c.activation],
        "layer_norm_epsilon": c.norm_eps, "tie_word_embeddings": c.tie_embeddings,
        "bos_token_id": None, "eos_token_id": None,  # unknown to lmref; GPTJConfig's 50256 may be out of vocab
    }


def rope_columns(c: ModelConfig, heads: int) -> tuple[int, ...] | None:
    """q's or k's column order for GPT-J's interleaved rotation of each head's first rope_dim
    dims: as stored for an interleaved config; for a halves one, HF column 2i of a head is
    lmref's i and 2i+1 is lmref's i + rope_dim/2 (the inverse of `rope_columns_permutation`
    over the rotated dims); the dims that pass through keep their place."""
    if c.rope_layout == "interleaved":
        return None
    r = c.rope_dim
    rotated = np.argsort(rope_columns_permutation(1, r, "interleaved"))  # [r]: lmref dim of HF dim j
    within = [*(int(j) for j in rotated), *range(r, c.head_dim)]  # [head_dim]
    return tuple(h * c.head_dim + j for h in range(heads) for j in within)


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("transformer.wte.weight", "embed.tokens")]
    q_perm, k_perm = rope_columns(c, c.n_heads), rope_columns(c, c.n_kv_heads)
    for i in range(c.n_layers):
        h, p = f"transformer.h.{i}", f"layers.{i}"
        table += [
            # ln_1 feeds both branches: lmref's attn_norm (shared_attn_norm, no mlp_norm)
            same(f"{h}.ln_1.weight", f"{p}.attn_norm.weight"), same(f"{h}.ln_1.bias", f"{p}.attn_norm.bias"),
            # nn.Linear weights [d_out, d_in]: `linear` stores the transpose of lmref's [d_in, d_out]
            linear(f"{h}.attn.q_proj.weight", f"{p}.attn.wq", perm=q_perm),
            linear(f"{h}.attn.k_proj.weight", f"{p}.attn.wk", perm=k_perm),
            linear(f"{h}.attn.v_proj.weight", f"{p}.attn.wv"), linear(f"{h}.attn.out_proj.weight", f"{p}.attn.wo"),
            linear(f"{h}.mlp.fc_in.weight", f"{p}.mlp.w_up"), same(f"{h}.mlp.fc_in.bias", f"{p}.mlp.b_up"),
            linear(f"{h}.mlp.fc_out.weight", f"{p}.mlp.w_down"), same(f"{h}.mlp.fc_out.bias", f"{p}.mlp.b_down"),
        ]
    table += [same("transformer.ln_f.weight", "final_norm.weight"), same("transformer.ln_f.bias", "final_norm.bias")]
    if not c.tie_embeddings:
        table.append(linear("lm_head.weight", "lm_head.weight"))  # nn.Linear(d, V): [V, d]
    return table + [same("lm_head.bias", "lm_head.bias")]  # [V], present tied or not
