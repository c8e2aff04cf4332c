"""Phi-1, Phi-1.5 and Phi-2 (`PhiForCausalLM`, transformers models/phi, 5.23) <-> lmref.

Checkpoint keys (transformers `models/phi/modeling_phi.py`): `model.embed_tokens`,
`model.layers.{i}.{input_layernorm, self_attn.{q,k,v}_proj, self_attn.dense, mlp.fc1, mlp.fc2}`,
`model.final_layernorm`, `lm_head` (weight and bias; the weight is absent when tied, the bias
never is).  Every projection is an `nn.Linear` with a bias, stored [d_out, d_in]: the
transpose of lmref's [d_in, d_out].

What PhiConfig does not say, and transformers hard-codes:

- `PhiDecoderLayer`: h + attn(ln(h)) + mlp(ln(h)), one `input_layernorm` for both branches
  (lmref's parallel_residual with shared_attn_norm); LayerNorms with bias.
- `PhiAttention`: biases on q, k, v and dense (`bias=True`), scores * head_dim^-0.5,
  head_dim = hidden_size / num_attention_heads, GQA by num_key_value_heads.
- RoPE (`rotate_half`, halves) on the first `rotary_ndims = int(head_dim *
  partial_rotary_factor)` dims of each head, frequencies over that width.
- `PhiForCausalLM.lm_head = nn.Linear(hidden_size, vocab_size, bias=True)`: a bias, tied or
  not (`_tied_weights_keys` ties the weight only), so lm_head_bias is always true.

The RoPE settings have two spellings.  The Hub's files (transformers 4.37 era) and 4.57 say
`partial_rotary_factor`, `rope_theta` and `rope_scaling` at the top level (4.57 reads only
these); 5.23 reads `rope_scaling` or else `rope_parameters`, each dict's `partial_rotary_factor`
and `rope_theta` defaulting to the top-level ones, then to 0.5 (PhiConfig.__post_init__,
"assign default for BC") and 10000 (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict`),
and saves `rope_parameters` only.  lmref reads every spelling and refuses a file where two
disagree (4.x and 5.x would run two models); it writes all of them, saying the same thing.
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
from lmref.convert.models import llama
from lmref.convert.rope import (
    DEFAULT_THETA, agreed_scaling, check_rotary_width, rope_dicts, rope_number, rope_scaling_rule, rope_to_hf,
)
from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.features import declare

MODEL_TYPE = "phi"
ARCHITECTURE = "PhiForCausalLM"
PREFIX = "model."  # PhiPreTrainedModel.base_model_prefix

FEATURES = declare(
    "positions.rope", "rope.partial", "rope.scaling.linear", "rope.scaling.llama3", "norm.layernorm", "norm.bias",
    "block.pre_norm", "block.parallel", "block.shared_norm", "attn.qkv_bias", "attn.out_bias", "mlp.plain",
    "mlp.bias", *ACTIVATION_FEATURES, "head.tied", "head.bias",
)
# The rotary `inv_freq` buffer some older checkpoints stored: not a weight.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
# dense: the attention branch before the sum; fc2: the MLP branch (PhiDecoderLayer's
# resid_dropout after each is off in eval); the layer: h after the sum.
LAYER_MODULES = {"attn": "model.layers.{i}.self_attn.dense", "mlp": "model.layers.{i}.mlp.fc2",
                 "out": "model.layers.{i}"}

# The class defaults of PhiConfig (transformers models/phi/configuration_phi.py, 5.23; 4.57 alike).
DEFAULTS = dict(vocab_size=51200, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                num_attention_heads=32, hidden_act="gelu_new", max_position_embeddings=2048, layer_norm_eps=1e-5,
                tie_word_embeddings=False)
HF_PARTIAL_ROTARY_FACTOR = 0.5  # PhiConfig: kwargs.setdefault("partial_rotary_factor", 0.5)

IGNORED = frozenset({"resid_pdrop", "embd_pdrop", "attention_dropout"})  # dropout: off in eval


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """PhiConfig fields (defaults: the PhiConfig class defaults) -> ModelConfig."""
    size = {key: cfg.positive_integer(key, DEFAULTS[key]) for key in llama.SHAPE_KEYS}
    d, n_heads = size["hidden_size"], size["num_attention_heads"]
    if d % n_heads:
        cfg.fail("num_attention_heads", n_heads,
                 f"hidden_size ({d}) must be divisible by it (PhiAttention's head_dim is hidden_size / heads)")
    head_dim = d // n_heads
    # PhiConfig has no head_dim field, but keeps one from config.json, and PhiAttention reads it
    # (`getattr(config, "head_dim", hidden_size // num_attention_heads)`); qk_layernorm would not
    cfg.require("head_dim", head_dim, (head_dim,), f"PhiAttention would size its heads by it, and lmref maps "
                f"only hidden_size / num_attention_heads = {head_dim}")
    # q_layernorm / k_layernorm: nn.LayerNorm(head_dim) with a bias, before RoPE; lmref's
    # qk_norm kinds are RMSNorms (per_head, per_projection) or weightless (l2)
    cfg.require("qk_layernorm", False, (False,), "Phi's q/k LayerNorm (with a bias) is none of lmref's qk_norm "
                "kinds (RMSNorm or L2)")
    max_seq_len = size["max_position_embeddings"]
    theta, fraction, scaling = rope_fields(cfg, head_dim, max_seq_len)
    n_kv = cfg.optional_positive_integer("num_key_value_heads")  # None: num_attention_heads (__post_init__)
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=size["vocab_size"], d_model=d,
        n_layers=size["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=n_heads if n_kv is None else n_kv, head_dim=head_dim,
        d_ff=size["intermediate_size"], max_seq_len=max_seq_len,
        position="rope", rope_theta=theta, rope_fraction=fraction, rope_scaling=scaling,
        tie_embeddings=cfg.flag("tie_word_embeddings", DEFAULTS["tie_word_embeddings"]), lm_head_bias=True,
        norm="layernorm", norm_eps=cfg.number("layer_norm_eps", DEFAULTS["layer_norm_eps"]), norm_bias=True,
        qkv_bias=True, attn_out_bias=True, mlp="plain", activation=cfg.activation("hidden_act", DEFAULTS["hidden_act"]),
        mlp_bias=True, parallel_residual=True, shared_attn_norm=True,
    )


def rope_fields(cfg: HFConfig, head_dim: int, max_seq_len: int) -> tuple[float, float, RopeScaling | None]:
    """(rope_theta, rope_fraction, rope_scaling), every spelling read (module docstring)."""
    dicts = rope_dicts(cfg)
    _, theta = rope_number(cfg, dicts, "rope_theta", DEFAULT_THETA)
    fraction_key, fraction = rope_number(cfg, dicts, "partial_rotary_factor", HF_PARTIAL_ROTARY_FACTOR)
    # PhiAttention.rotary_ndims = int(head_dim * factor): even, and what lmref's rope_dim rotates
    check_rotary_width(cfg, fraction_key, head_dim, fraction)
    return theta, fraction, agreed_scaling(cfg, dicts, max_seq_len, theta)


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> PhiConfig fields; ConversionError if Phi cannot express it."""
    width = int(c.head_dim * c.rope_fraction)  # PhiAttention.rotary_ndims
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len",
                "rope_theta", "rope_fraction", "rope_scaling", "tie_embeddings", "norm_eps", "activation"},
        fixed={"position": "rope", "rope_layout": "halves", "norm": "layernorm", "norm_bias": True, "qkv_bias": True,
               "attn_out_bias": True, "mlp": "plain", "mlp_bias": True, "lm_head_bias": True,
               "parallel_residual": True, "shared_attn_norm": True},
        rules=[("head_dim", c.head_dim * c.n_heads == c.d_model, "Phi derives head_dim = d_model / n_heads"),
               ("rope_fraction", width == c.rope_dim,
                f"transformers rotates int(head_dim * partial_rotary_factor) = {width} dims, which must be even"),
               activation_rule(c), rope_scaling_rule(c)],
    )
    return {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "intermediate_size": c.d_ff,
        "hidden_act": ACTIVATION_TO_HF[c.activation], "max_position_embeddings": c.max_seq_len,
        "layer_norm_eps": c.norm_eps, "tie_word_embeddings": c.tie_embeddings, "qk_layernorm": False,
        **rope_hf_fields(c),
        "bos_token_id": None, "eos_token_id": None,  # unknown to lmref; PhiConfig's 1 and 2 may mean nothing
    }


def rope_hf_fields(c: ModelConfig) -> dict:
    """The RoPE in 5.x's `rope_parameters` and in 4.x's top-level `partial_rotary_factor`,
    `rope_theta` and `rope_scaling` (which 5.x reads first, its theta and factor from the
    top-level fields)."""
    rope = rope_to_hf(c)
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
    return {"rope_parameters": rope | {"partial_rotary_factor": c.rope_fraction},
            "partial_rotary_factor": c.rope_fraction, "rope_theta": rope["rope_theta"],
            "rope_scaling": None if scaling["rope_type"] == "default" else scaling}


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        h, p = f"model.layers.{i}", f"layers.{i}"
        table += [
            # input_layernorm feeds both branches: lmref's attn_norm (shared_attn_norm, no mlp_norm)
            same(f"{h}.input_layernorm.weight", f"{p}.attn_norm.weight"),
            same(f"{h}.input_layernorm.bias", f"{p}.attn_norm.bias"),
        ]
        # nn.Linear weights [d_out, d_in]: `linear` stores the transpose of lmref's [d_in, d_out]
        for hf_name, ours in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("dense", "o")):
            table += [linear(f"{h}.self_attn.{hf_name}.weight", f"{p}.attn.w{ours}"),
                      same(f"{h}.self_attn.{hf_name}.bias", f"{p}.attn.b{ours}")]
        table += [
            linear(f"{h}.mlp.fc1.weight", f"{p}.mlp.w_up"), same(f"{h}.mlp.fc1.bias", f"{p}.mlp.b_up"),
            linear(f"{h}.mlp.fc2.weight", f"{p}.mlp.w_down"), same(f"{h}.mlp.fc2.bias", f"{p}.mlp.b_down"),
        ]
    table += [same("model.final_layernorm.weight", "final_norm.weight"),
              same("model.final_layernorm.bias", "final_norm.bias")]
    if not c.tie_embeddings:
        table.append(linear("lm_head.weight", "lm_head.weight"))  # nn.Linear(d, V): [V, d]
    return table + [same("lm_head.bias", "lm_head.bias")]  # [V], present tied or not
