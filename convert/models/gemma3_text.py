"""Gemma 3's text model (`Gemma3ForCausalLM`, model_type gemma3_text, transformers models/gemma3,
5.23) <-> lmref.

Gemma 2's block and fields (convert/models/gemma2.py) with (`modeling_gemma3.py`):

- a per-head QK norm before the RoPE (`Gemma3Attention`: q_norm, k_norm, Gemma's (1 + w)
  RMSNorm over head_dim; lmref's `qk_norm="per_head"` with `norm_unit_offset`);
- two RoPEs by layer type (`Gemma3RotaryEmbedding`): the sliding layers rotate with
  `rope_local_base_freq` (default 1e4) and no scaling, the full ones with `rope_theta`
  (default 1e6) and `rope_scaling` (lmref's `rope_theta_local`, `rope_theta`,
  `rope_scaling`).  5.x holds them as `rope_parameters` {"sliding_attention": ...,
  "full_attention": ...} (`Gemma3TextConfig.convert_rope_params_to_dict`); 4.x as the flat
  keys, which lmref writes too and reads alike;
- no attention softcap: `attn_logit_softcapping` is a config field that `Gemma3Attention`
  stores but never passes to the attention function, while Google's `gemma` would apply
  it, so a file that sets it means two models: refused both ways;
- `layer_types` by default sliding iff (i + 1) % `sliding_window_pattern` (6).

Read back, a config with sliding layers always has `rope_theta_local` (the sliding layers'
base, perhaps rope_theta's); one without any has none.
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, HFConfig, activation_rule, check_expressible
from lmref.convert.layer_types import layer_types_rule
from lmref.convert.layout import Entry
from lmref.convert.models import gemma, gemma2, llama
from lmref.convert.rope import ROPE_FEATURES, rope_of_dict, rope_scaling_rule, rope_to_hf
from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.features import declare

MODEL_TYPE = "gemma3_text"
ARCHITECTURE = "Gemma3ForCausalLM"
PREFIX = "model."  # Gemma3PreTrainedModel.base_model_prefix

# Gemma3ForCausalLM: Gemma 2's without the attention softcap, with QK norm and a local theta.
FEATURES = declare(
    *ROPE_FEATURES, "rope.local_theta", "embedding.scale", "norm.rmsnorm", "norm.unit_offset",
    "block.sandwich_norm", "attn.qkv_bias", "attn.out_bias", "attn.qk_norm.per_head", "attn.query_scale",
    "attn.sliding", "mlp.gated", *ACTIVATION_FEATURES, "head.tied", "head.softcap",
)
IGNORED_SUFFIXES = llama.IGNORED_SUFFIXES
LAYER_MODULES = gemma2.LAYER_MODULES
IGNORED = gemma2.IGNORED | {
    # 5.x's to_dict writes the pattern it derived layer_types from; it is never read back
    "_sliding_window_pattern",
}

# Gemma3TextConfig's class defaults where they differ from Gemma2Config's (configuration_gemma3.py).
DEFAULTS = gemma2.DEFAULTS | dict(vocab_size=262208, max_position_embeddings=131072)
GLOBAL_THETA, LOCAL_THETA = 1_000_000.0, 10_000.0  # Gemma3TextConfig.default_theta
DEFAULT_PERIOD = 6  # sliding_window_pattern
NESTED = ("full_attention", "sliding_attention")


def _current_ropes(cfg: HFConfig, params: object, max_seq_len: int) -> tuple:
    """(theta, scaling, local theta) of 5.x's nested `rope_parameters`; an entry without a
    theta takes `rope_theta` / `rope_local_base_freq`, as 5.x does."""
    if not isinstance(params, dict) or set(params) - set(NESTED):
        cfg.fail("rope_parameters", params, f"expected one entry per layer type ({', '.join(NESTED)})")
    # what an entry without its own theta takes (ropes_from_hf reads these keys again, as 4.x does)
    theta = cfg.checked_number("rope_theta", cfg.data.get("rope_theta", GLOBAL_THETA))
    local_theta = cfg.checked_number("rope_local_base_freq", cfg.data.get("rope_local_base_freq", LOCAL_THETA))
    full = rope_of_dict(cfg, "rope_parameters.full_attention", params.get("full_attention") or {}, max_seq_len, theta)
    local, local_scaling = rope_of_dict(cfg, "rope_parameters.sliding_attention", params.get("sliding_attention") or {},
                                        max_seq_len, local_theta)
    if local_scaling is not None:
        cfg.fail("rope_parameters.sliding_attention.rope_type", local_scaling.kind,
                 "lmref's sliding layers rotate unscaled (and transformers 4.x's always do)")
    return (*full, local)


def _legacy_ropes(cfg: HFConfig, max_seq_len: int) -> tuple:
    """(theta, scaling, local theta) of 4.x's flat keys."""
    theta = cfg.number("rope_theta", GLOBAL_THETA)
    local = cfg.number("rope_local_base_freq", LOCAL_THETA)
    return (*rope_of_dict(cfg, "rope_scaling", cfg.get("rope_scaling") or {}, max_seq_len, theta), local)


def ropes_from_hf(cfg: HFConfig, max_seq_len: int) -> tuple[float, RopeScaling | None, float]:
    """(rope_theta, rope_scaling, the sliding layers' theta), from either form; a file holding
    both must say the same in each, or transformers 4.x and 5.x would run different models."""
    read, current = [], cfg.get("rope_parameters")
    if current:
        read.append(_current_ropes(cfg, current, max_seq_len))
    if any(key in cfg.data for key in ("rope_theta", "rope_local_base_freq", "rope_scaling")) or not read:
        read.append(_legacy_ropes(cfg, max_seq_len))
    if len(read) == 2 and read[0] != read[1]:
        cfg.fail("rope_parameters", current, f"disagrees with rope_theta, rope_scaling and "
                 f"rope_local_base_freq: {read[0]} vs {read[1]} (theta, scaling, local theta)")
    return read[0]


def ropes_to_hf(c: ModelConfig) -> dict:
    """`ropes_from_hf`'s inverse, in both forms.  Without rope_theta_local lmref's sliding
    layers rotate like the global ones: with rope_theta, as written here when there is no
    scaling (with one, config_to_hf refuses the config)."""
    local = c.rope_theta_local if c.rope_theta_local is not None else c.rope_theta
    full = rope_to_hf(c)
    return {"rope_parameters": {"full_attention": full, "sliding_attention": {"rope_type": "default",
                                                                              "rope_theta": float(local)}},
            **llama.legacy_rope_fields(full), "rope_local_base_freq": float(local)}


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Gemma3TextConfig fields (defaults: the Gemma3TextConfig class defaults) -> ModelConfig."""
    fields = llama.shape_fields(cfg, name, MODEL_TYPE, DEFAULTS) | gemma.gemma_fields(cfg)
    theta, scaling, local = ropes_from_hf(cfg, fields["max_seq_len"])
    cfg.require("attn_logit_softcapping", None, (None,),
                "transformers' gemma3_text never applies it (Gemma3Attention passes no softcap) and Google's gemma "
                "does, so the file means two models")
    layers = gemma2.layer_fields(cfg, fields["n_layers"], period=cfg.get("sliding_window_pattern", DEFAULT_PERIOD))
    return ModelConfig(
        **fields, **layers, position="rope", rope_theta=theta, rope_scaling=scaling,
        rope_theta_local=local if "sliding" in layers["attn_pattern"] else None,
        norm_placement="sandwich", qk_norm="per_head", query_scale_dim=gemma2.query_scale_dim(cfg, fields["head_dim"]),
        final_logit_softcap=cfg.get("final_logit_softcapping"),
        activation=cfg.activation("hidden_activation", "gelu_pytorch_tanh"),
    )


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Gemma3TextConfig fields; ConversionError if Gemma 3 cannot express it."""
    sliding = "sliding" in c.attn_pattern
    check_expressible(
        c, MODEL_TYPE, mapped=gemma2.MAPPED | {"attn_softcap", "rope_theta_local"},
        fixed=gemma.FIXED | {"norm_placement": "sandwich", "qk_norm": "per_head"},
        rules=[*gemma.gemma_rules(c), activation_rule(c), rope_scaling_rule(c), layer_types_rule(c),
               gemma2.heads_rule(c),
               ("attn_softcap", c.attn_softcap is None,
                "transformers' gemma3_text ignores attn_logit_softcapping (Google's gemma would apply it)"),
               ("rope_theta_local", not sliding or c.rope_theta_local is not None or c.rope_scaling is None,
                "without it lmref's sliding layers take rope_scaling too; transformers' gemma3_text "
                "never scales them")],
    )
    return (llama.shape_hf_fields(c) | ropes_to_hf(c) | gemma.gemma_hf_fields(c) | gemma2.layer_hf_fields(c)
            | {"attn_logit_softcapping": None})


def entries(c: ModelConfig) -> list[Entry]:
    return gemma.sandwich_entries(c)
