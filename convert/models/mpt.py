"""MPT (`MptForCausalLM`, transformers models/mpt, 5.23; mosaicml/mpt-7b) <-> lmref.

Checkpoint keys (transformers `models/mpt/modeling_mpt.py`): `transformer.wte`,
`transformer.blocks.{i}.{norm_1, attn.Wqkv, attn.out_proj, norm_2, ffn.up_proj,
ffn.down_proj}`, `transformer.norm_f`; `lm_head` only when untied.  Projections are
`nn.Linear` without bias ([d_out, d_in]), LayerNorms have a weight and no bias.

transformers' MPT hard-codes what MosaicML's config makes optional: ALiBi with max bias 8
(`MptModel.forward` never passes `attn_config.alibi_bias_max`), multi-head attention, no
biases, MLP width 4 * d_model, exact GELU, LayerNorm without bias.  A config.json whose
fields ask for anything else describes a model that transformers would silently compute
differently, so it is refused, naming the field; so is a ModelConfig transformers cannot
express.
"""

from __future__ import annotations

import math

from lmref.convert.fields import HFConfig, check_expressible
from lmref.convert.layout import Entry, linear, same
from lmref.spec.config import ModelConfig
from lmref.spec.features import declare

MODEL_TYPE = "mpt"
ARCHITECTURE = "MptForCausalLM"
PREFIX = "transformer."  # MptPreTrainedModel.base_model_prefix

# MptForCausalLM: ALiBi (build_mpt_alibi_tensor), LayerNorm without bias, no biases,
# attn_config.clip_qkv and .softmax_scale (query_scale_dim), MptMLP up -> exact GELU -> down.
FEATURES = declare(
    "positions.alibi", "norm.layernorm", "block.pre_norm", "attn.qkv_clip", "attn.query_scale", "mlp.plain",
    "activation.gelu", "head.tied",
)
IGNORED_SUFFIXES = ()
LAYER_MODULES = {"attn": "transformer.blocks.{i}.attn.out_proj", "mlp": "transformer.blocks.{i}.ffn.down_proj",
                 "out": "transformer.blocks.{i}"}
HF_ALIBI_MAX_BIAS = 8.0  # build_mpt_alibi_tensor(..., alibi_bias_max=8), the only value MptModel uses
HF_EXPANSION = 4  # MptMLP: nn.Linear(hidden_size, 4 * hidden_size)

IGNORED = frozenset({
    "resid_pdrop", "emb_pdrop",  # dropout: off in eval
    "embedding_fraction",  # scales the embedding's gradient only: x * f + x.detach() * (1 - f)
    "init_device", "init_config", "verbose", "tokenizer_name",  # MosaicML bookkeeping, no numbers
    # learned_pos_emb: MosaicML's mpt-7b configs say true next to alibi; its code builds no
    # position table when alibi is on, and transformers never reads the field
    "learned_pos_emb",
})
ATTN_IGNORED = frozenset({
    "attn_pdrop",  # dropout: off in eval
    "attn_impl",  # torch / flash / triton kernels of the same attention
    "attn_uses_sequence_id",  # only masks across packed sequences given sequence ids, never here
})


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """MptConfig fields (defaults: the MptConfig class defaults) -> ModelConfig."""
    d, n_heads = cfg.positive_integer("d_model", 2048), cfg.positive_integer("n_heads", 16)
    if d % n_heads:
        cfg.fail("n_heads", n_heads, f"d_model ({d}) must be divisible by it (MPT's head_dim is d_model / n_heads)")
    cfg.require("expansion_ratio", HF_EXPANSION, (HF_EXPANSION,), "transformers' MptMLP hard-codes width 4 * d_model")
    cfg.require("no_bias", True, (True,), "transformers' MPT has no biases")
    cfg.require("logit_scale", None, (None,), "transformers' MPT ignores it (its logits are never scaled)")
    cfg.require("norm_type", "low_precision_layernorm", ("low_precision_layernorm", "layernorm"),
                "transformers' MPT always uses a LayerNorm (low_precision_layernorm is the same math)")
    attn = cfg.sub("attn_config", ATTN_IGNORED)
    attn.require("attn_type", "multihead_attention", ("multihead_attention",),
                 "transformers' MPT always runs multi-head attention")
    attn.require("alibi", True, (True,), "transformers' MPT always adds ALiBi")
    attn.require("alibi_bias_max", HF_ALIBI_MAX_BIAS, (HF_ALIBI_MAX_BIAS,),
                 "transformers' MPT ignores it and always uses 8")
    scale_dim = query_scale_dim(attn)
    attn.require("qk_ln", False, (False,), "transformers' MPT ignores it; lmref has no full-projection LayerNorm")
    attn.require("prefix_lm", False, (False,), "transformers' MPT ignores it; lmref models are causal")
    clip = attn.get("clip_qkv")
    attn.finish()
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=cfg.positive_integer("vocab_size", 50368), d_model=d,
        n_layers=cfg.positive_integer("n_layers", 24), n_heads=n_heads, n_kv_heads=n_heads, head_dim=d // n_heads,
        d_ff=HF_EXPANSION * d,
        max_seq_len=cfg.positive_integer("max_seq_len", 2048), position="alibi", alibi_max_bias=HF_ALIBI_MAX_BIAS,
        tie_embeddings=cfg.flag("tie_word_embeddings", True),
        norm="layernorm", norm_eps=cfg.number("layer_norm_epsilon", 1e-5), norm_bias=False,
        qkv_clip=clip or None,  # MptAttention tests `if self.clip_qkv:`, so 0 means no clipping
        query_scale_dim=scale_dim,
        mlp="plain", activation="gelu",
    )


def query_scale_dim(attn: HFConfig) -> int | None:
    """attn_config.softmax_scale (MptAttention: scores * softmax_scale; null: head_dim^-0.5) as
    lmref's query_scale_dim Q (scores * Q^-0.5): Q = 1 / softmax_scale^2, which must be an integer
    whose Q^-0.5 is softmax_scale to the last bit or so (0.125 is 64^-0.5)."""
    scale = attn.get("softmax_scale")
    if scale is None:
        return None
    scale = attn.checked_number("softmax_scale", scale)
    dim = round(1 / scale ** 2) if 1e-150 < scale < 1e150 else 0  # beyond: no whole number's inverse root
    if dim < 1 or not math.isclose(dim ** -0.5, scale, rel_tol=4e-16):
        attn.fail("softmax_scale", scale, "lmref scales scores by Q^-0.5 for a whole number Q, and 1 / scale^2 is "
                  "not one")
    return dim


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> MptConfig fields; ConversionError if MPT cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "max_seq_len", "tie_embeddings", "norm_eps", "qkv_clip", "query_scale_dim"},
        fixed={"position": "alibi", "alibi_max_bias": HF_ALIBI_MAX_BIAS, "norm": "layernorm",
               "mlp": "plain", "activation": "gelu"},
        rules=[("n_kv_heads", c.n_kv_heads == c.n_heads, "transformers' MPT is multi-head (n_kv_heads == n_heads)"),
               ("head_dim", c.head_dim * c.n_heads == c.d_model, "MPT derives head_dim = d_model / n_heads"),
               ("d_ff", c.d_ff == HF_EXPANSION * c.d_model,
                f"transformers' MptMLP is 4 * d_model = {HF_EXPANSION * c.d_model} wide")],
    )
    return {
        "vocab_size": c.vocab_size, "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads,
        "expansion_ratio": HF_EXPANSION, "max_seq_len": c.max_seq_len, "layer_norm_epsilon": c.norm_eps,
        "tie_word_embeddings": c.tie_embeddings, "no_bias": True,
        "attn_config": {"attn_type": "multihead_attention", "alibi": True, "alibi_bias_max": int(HF_ALIBI_MAX_BIAS),
                        "clip_qkv": c.qkv_clip, "qk_ln": False, "prefix_lm": False,
                        "softmax_scale": None if c.query_scale_dim is None else c.query_scale_dim ** -0.5},
    }


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("transformer.wte.weight", "embed.tokens")]
    for i in range(c.n_layers):
        h, p = f"transformer.blocks.{i}", f"layers.{i}"
        table += [
            same(f"{h}.norm_1.weight", f"{p}.attn_norm.weight"),
            # Wqkv is one nn.Linear d -> 3d; MptAttention takes .chunk(3) of its output, so its
            # rows are q's, then k's, then v's, each block head-major like lmref's columns (not
            # interleaved per head as in BLOOM / NeoX): concat the columns, then transpose.
            Entry(f"{h}.attn.Wqkv.weight", (f"{p}.attn.wq", f"{p}.attn.wk", f"{p}.attn.wv"), linear=True),
            # nn.Linear weights [d_out, d_in]: `linear` stores the transpose of lmref's [d_in, d_out]
            linear(f"{h}.attn.out_proj.weight", f"{p}.attn.wo"),
            same(f"{h}.norm_2.weight", f"{p}.mlp_norm.weight"),
            linear(f"{h}.ffn.up_proj.weight", f"{p}.mlp.w_up"),
            linear(f"{h}.ffn.down_proj.weight", f"{p}.mlp.w_down"),
        ]
    table.append(same("transformer.norm_f.weight", "final_norm.weight"))
    if not c.tie_embeddings:
        table.append(linear("lm_head.weight", "lm_head.weight"))  # nn.Linear(d, V): [V, d]
    return table
