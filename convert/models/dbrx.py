"""DBRX (`DbrxForCausalLM`, transformers models/dbrx, 5.23; databricks/dbrx-base) <-> lmref.

Pre-norm blocks with LayerNorms without bias (`nn.LayerNorm(d_model, bias=False)`, eps 1e-5,
not a config field), a fused q | k | v projection clamped to [-clip_qkv, clip_qkv] before the
split (`DbrxAttention`: the same clamp of q, k and v), GQA with head_dim d_model / n_heads,
RoPE, and every FFN a mixture (`DbrxFFN`): softmax over `ffn_config.moe_num_experts`,
the top `moe_top_k`, divided by their p-norm, p = `moe_normalize_expert_weights` (1: the
sum, lmref's renormalisation; null: none), and GLU experts `ffn_act_fn`(x w1_e^T) * (x v1_e^T)
@ w2_e.  No tied head (`DbrxConfig.validate_architecture` refuses one).

Two transformers 5.23 traps, both in `DbrxAttention` / `DbrxRotaryEmbedding`:
- the RoPE rotates with the top-level `rope_parameters` (10000 when absent), while the Hub's
  files, Databricks' code and transformers 4.x use `attn_config.rope_theta` (5e5 for DBRX;
  5.23 also raises AttributeError without it).  lmref writes both; reading, a file that
  states both must agree (else it is two models and is refused), and one that states only
  `attn_config.rope_theta` means that theta (5.23 would run 10000 on it).
- `clip_qkv` null makes the forward raise (`clamp(min=None, max=None)`), so a config without
  a clip is not written as dbrx.

Checkpoint keys: `transformer.wte.weight`, `transformer.blocks.{i}.norm_attn_norm.{norm_1,
norm_2}.weight`, `...norm_attn_norm.attn.Wqkv.weight` [q + 2 kv, d] (an nn.Linear: q's rows,
then k's, then v's), `...attn.out_proj.weight`, `transformer.blocks.{i}.ffn.router.layer.weight`
[E, d], `...ffn.experts.mlp.{w1, v1, w2}` each [E * f, d] (expert e's rows e*f .. e*f + f; w1
and v1 are nn.Linear-like [f, d], w2 is used untransposed, `inter @ w2_e`), `transformer.norm_f`,
`lm_head.weight`.
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, ACTIVATION_TO_HF, HFConfig, activation_rule, check_expressible
from lmref.convert.layout import Entry, linear, same
from lmref.convert.moe import (
    MOE_FEATURES, MOE_IGNORED, MOE_MAPPED, OBJECTIVE_FIELDS, every_layer_rule, moe_rules, objective_from_hf,
    objective_to_hf,
)
from lmref.convert.rope import DEFAULT_THETA, rope_columns_permutation, rope_from_hf, rope_to_hf
from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.features import declare

MODEL_TYPE = "dbrx"
ARCHITECTURE = "DbrxForCausalLM"
PREFIX = "transformer."  # DbrxPreTrainedModel.base_model_prefix

# DbrxForCausalLM: LayerNorm without bias, clip_qkv, RoPE without scaling (4.x takes only a
# theta), GLU experts, top-k weights renormalised or not.
FEATURES = declare(
    "positions.rope", "rope.interleaved", "norm.layernorm", "block.pre_norm", "attn.qkv_clip", "mlp.gated",
    *ACTIVATION_FEATURES, *MOE_FEATURES, "moe.no_renormalize",
)
IGNORED_SUFFIXES = ()
LAYER_MODULES = {"attn": "transformer.blocks.{i}.norm_attn_norm.attn.out_proj", "mlp": "transformer.blocks.{i}.ffn",
                 "router": "transformer.blocks.{i}.ffn.router", "experts": "transformer.blocks.{i}.ffn.experts",
                 "out": "transformer.blocks.{i}"}
DBRX_NORM_EPS = 1e-5  # nn.LayerNorm's default; no config field
IGNORED = MOE_IGNORED | {
    "resid_pdrop", "emb_pdrop",  # dropout: off in eval
    "num_key_value_heads",  # DbrxConfig.__post_init__ sets it from attn_config.kv_n_heads
}
ATTN_IGNORED = frozenset({"attn_pdrop"})  # dropout: off in eval
FFN_IGNORED = frozenset({
    "moe_jitter_eps",  # scales the router's input in training only (`if self.training and ...`)
    "hidden_size",  # DbrxConfig.__post_init__ sets it to d_model
})
# DbrxConfig, DbrxAttentionConfig and DbrxFFNConfig class defaults (configuration_dbrx.py).
DEFAULTS = dict(d_model=2048, n_heads=16, n_layers=24, max_seq_len=2048, vocab_size=32000, kv_n_heads=1,
                ffn_hidden_size=3584, moe_num_experts=4, moe_top_k=1, moe_loss_weight=0.01)


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """DbrxConfig fields (defaults: the DbrxConfig class defaults) -> ModelConfig."""
    d, n_heads, n_layers, vocab, max_seq_len = (cfg.positive_integer(key, DEFAULTS[key]) for key in (
        "d_model", "n_heads", "n_layers", "vocab_size", "max_seq_len"))
    if d % n_heads:
        cfg.fail("n_heads", n_heads, f"d_model ({d}) must be divisible by it (DBRX's head_dim is d_model / n_heads)")
    if cfg.flag("tie_word_embeddings", False):
        cfg.fail("tie_word_embeddings", True, "DbrxConfig refuses a tied head")
    attn, ffn = cfg.sub("attn_config", ATTN_IGNORED), cfg.sub("ffn_config", FFN_IGNORED)
    clip = attn.get("clip_qkv")
    config = ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=vocab, d_model=d, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=attn.positive_integer("kv_n_heads", DEFAULTS["kv_n_heads"]), head_dim=d // n_heads,
        d_ff=ffn.positive_integer("ffn_hidden_size", DEFAULTS["ffn_hidden_size"]), max_seq_len=max_seq_len,
        position="rope", rope_theta=rope_theta(cfg, attn, max_seq_len),
        norm="layernorm", norm_eps=DBRX_NORM_EPS, norm_bias=False,
        qkv_clip=None if clip is None else attn.checked_number("clip_qkv", clip),
        mlp="gated", activation=activation(ffn), mlp_pattern=("moe",), moe=moe_config(cfg, ffn),
    )
    attn.finish()
    ffn.finish()
    return config


def rope_theta(cfg: HFConfig, attn: HFConfig, max_seq_len: int) -> float:
    """The theta of `attn_config.rope_theta` (Databricks, transformers 4.x; default 10000),
    which the top-level RoPE keys (what 5.23 rotates with) must repeat when a file has them."""
    theta = attn.number("rope_theta", DEFAULT_THETA)
    if not any(key in cfg.data for key in ("rope_parameters", "rope_theta", "rope_scaling")):
        return theta
    top, scaling = rope_from_hf(cfg, max_seq_len)
    if scaling is not None:
        cfg.fail("rope_parameters", cfg.get("rope_parameters"), "DBRX takes a theta only (attn_config.rope_theta)")
    if top != theta:
        attn.fail("rope_theta", theta, f"disagrees with rope_parameters' rope_theta={top!r}: transformers 5.23 "
                  "rotates with rope_parameters, transformers 4.x and Databricks' code with attn_config.rope_theta")
    return theta


def activation(ffn: HFConfig) -> str:
    """`ffn_config.ffn_act_fn` {"name": ...} (`DbrxExpertGLU`: ACT2FN[name], silu by default)."""
    act = ffn.sub("ffn_act_fn")
    name = act.activation("name", "silu")
    act.finish()
    return name


def moe_config(cfg: HFConfig, ffn: HFConfig) -> MoEConfig:
    """The FFN's MoEConfig; `moe_normalize_expert_weights` 1 renormalises, null does not."""
    norm = ffn.require("moe_normalize_expert_weights", 1.0, (1, None),
                       "lmref renormalises the top-k weights by their sum (p = 1) or not at all (null)")
    weight = ffn.number("moe_loss_weight", DEFAULTS["moe_loss_weight"])
    # router_aux_loss_coef: the Hub's files repeat the loss weight there; DbrxForCausalLM reads moe_loss_weight
    cfg.require("router_aux_loss_coef", weight, (weight,), f"disagrees with ffn_config.moe_loss_weight={weight!r}, "
                "which DbrxForCausalLM uses")
    ffn.require("uniform_expert_assignment", False, (False,), "lmref routes every token by its router")
    return MoEConfig(n_experts=ffn.positive_integer("moe_num_experts", DEFAULTS["moe_num_experts"]),
                     n_experts_per_token=ffn.positive_integer("moe_top_k", DEFAULTS["moe_top_k"]),
                     renormalize=norm is not None, **objective_from_hf(cfg, weight))


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> DbrxConfig fields; ConversionError if DBRX cannot express it."""
    check_expressible(
        c, MODEL_TYPE,
        mapped=MOE_MAPPED | {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                             "max_seq_len", "rope_theta", "rope_layout", "qkv_clip", "activation"},
        fixed={"position": "rope", "norm": "layernorm", "norm_eps": DBRX_NORM_EPS, "mlp": "gated"},
        rules=[activation_rule(c), every_layer_rule(c, MODEL_TYPE),
               ("head_dim", c.head_dim * c.n_heads == c.d_model, "DBRX derives head_dim = d_model / n_heads"),
               ("qkv_clip", c.qkv_clip is not None,
                "transformers 5.23's DbrxAttention raises without clip_qkv (clamp(min=None, max=None))"),
               *moe_rules(c, MODEL_TYPE, {"n_experts", "n_experts_per_token", "renormalize", *OBJECTIVE_FIELDS})],
    )
    m = c.moe
    return {
        "vocab_size": c.vocab_size, "d_model": c.d_model, "n_layers": c.n_layers, "n_heads": c.n_heads,
        "max_seq_len": c.max_seq_len, "tie_word_embeddings": False, "rope_parameters": rope_to_hf(c),
        "attn_config": {"kv_n_heads": c.n_kv_heads, "clip_qkv": c.qkv_clip, "rope_theta": float(c.rope_theta)},
        "ffn_config": {"ffn_hidden_size": c.d_ff, "moe_num_experts": m.n_experts, "moe_top_k": m.n_experts_per_token,
                       "moe_normalize_expert_weights": 1.0 if m.renormalize else None,
                       "moe_loss_weight": m.aux_loss_coef, "ffn_act_fn": {"name": ACTIVATION_TO_HF[c.activation]}},
        **objective_to_hf(m),
    }


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("transformer.wte.weight", "embed.tokens")]
    q_perm = rope_columns_permutation(c.n_heads, c.head_dim, c.rope_layout)
    k_perm = rope_columns_permutation(c.n_kv_heads, c.head_dim, c.rope_layout)
    # the fused columns [q | k | v]: q's and k's RoPE layout permutations in place, v unmoved
    perm = None if q_perm is None else (*q_perm, *(c.q_dim + j for j in k_perm),
                                        *range(c.q_dim + c.kv_dim, c.q_dim + 2 * c.kv_dim))
    for i in range(c.n_layers):
        h, p = f"transformer.blocks.{i}", f"layers.{i}"
        table += [
            same(f"{h}.norm_attn_norm.norm_1.weight", f"{p}.attn_norm.weight"),
            Entry(f"{h}.norm_attn_norm.attn.Wqkv.weight", (f"{p}.attn.wq", f"{p}.attn.wk", f"{p}.attn.wv"),
                  linear=True, perm=perm),
            linear(f"{h}.norm_attn_norm.attn.out_proj.weight", f"{p}.attn.wo"),
            same(f"{h}.norm_attn_norm.norm_2.weight", f"{p}.mlp_norm.weight"),
            linear(f"{h}.ffn.router.layer.weight", f"{p}.mlp.router"),
            # [E, d, f] -> each expert transposed [E, f, d] -> [E * f, d]
            Entry(f"{h}.ffn.experts.mlp.w1", (f"{p}.mlp.experts.w_gate",), linear=True, flatten=True),
            Entry(f"{h}.ffn.experts.mlp.v1", (f"{p}.mlp.experts.w_up",), linear=True, flatten=True),
            Entry(f"{h}.ffn.experts.mlp.w2", (f"{p}.mlp.experts.w_down",), flatten=True),  # [E, f, d] -> [E * f, d]
        ]
    return table + [same("transformer.norm_f.weight", "final_norm.weight"), linear("lm_head.weight", "lm_head.weight")]
