"""Phi-3 (`Phi3ForCausalLM`, transformers models/phi3, 5.23) <-> lmref.

LLaMA's block with two tensors fused (transformers `models/phi3/modeling_phi3.py`):

- `self_attn.qkv_proj` [(H + 2 K) hd, d]: rows q | k | v, each head after head (`Phi3Attention`:
  `query_pos = num_attention_heads * head_dim`, then the keys, then the values);
- `mlp.gate_up_proj` [2 d_ff, d]: the gate's rows, then the up projection's (`Phi3MLP`:
  `gate, up_states = up_states.chunk(2, dim=-1)`, `down(up * act(gate))`).

Each splits back at the widths the config names (convert/layout.py, exact both ways); a fused
tensor of any other shape is refused, naming the key.  No biases (`bias=False` everywhere),
RMSNorm (`rms_norm_eps`), untied head by default, rotate-half RoPE on int(head_dim *
partial_rotary_factor) dims, an optional sliding window on every layer (`Phi3Model`:
`create_sliding_window_causal_mask` when `sliding_window` is set, else the causal mask).  A
window of at least max_position_embeddings keys never cuts (Phi-3-mini-128k's 262144): it is
read as no window, and written back as null, which transformers runs alike.

RoPE: "default" or "longrope" (the legacy names "su" and "yarn" are LongRoPE:
`Phi3Config.convert_rope_params_to_dict`), in `rope_scaling` (the Hub's files, 4.x) or
`rope_parameters` (5.x; `rope_scaling` replaces it whole), each number also at the top level.
LongRoPE's original context is the top-level `original_max_position_embeddings` (default 4096),
which 5.23 copies over any in the dict (`standardize_rope_params`: "we give priority to
self.original_max_position_embeddings"); its `factor` defaults to max_position_embeddings / O
(`_compute_longrope_parameters`), which sets the attention factor's default.  lmref writes the
Hub's spelling: top-level `rope_theta`, `original_max_position_embeddings` and `rope_scaling`
{"type": "longrope", short_factor, long_factor} (and `factor` or `attention_factor` only where
they are not the defaults).
"""

from __future__ import annotations

from lmref.convert.fields import ACTIVATION_FEATURES, ACTIVATION_TO_HF, HFConfig, activation_rule, check_expressible
from lmref.convert.layout import Entry, linear, same
from lmref.convert.models import llama
from lmref.convert.rope import DEFAULT_THETA, check_rotary_width, rope_dicts, rope_number
from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.features import declare

MODEL_TYPE = "phi3"
ARCHITECTURE = "Phi3ForCausalLM"
PREFIX = "model."  # Phi3PreTrainedModel.base_model_prefix

FEATURES = declare(
    "positions.rope", "rope.partial", "rope.scaling.longrope", "norm.rmsnorm", "block.pre_norm", "attn.sliding",
    "mlp.gated", *ACTIVATION_FEATURES, "head.tied",
)
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
LAYER_MODULES = {"attn": "model.layers.{i}.self_attn.o_proj", "mlp": "model.layers.{i}.mlp.down_proj",
                 "out": "model.layers.{i}"}
# Dropouts (off in eval); `attention_bias`, which Phi-3-mini-4k's file says (false) and no Phi-3
# class reads: every projection is `bias=False`.
IGNORED = frozenset({"resid_pdrop", "embd_pdrop", "attention_dropout", "attention_bias"})
# Phi3Config's class defaults (transformers models/phi3/configuration_phi3.py, 5.23).
DEFAULTS = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                num_attention_heads=32, hidden_act="silu", max_position_embeddings=4096,
                original_max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)
LONGROPE_NAMES = ("longrope", "su", "yarn")  # "su" and "yarn": Phi-3's first files, read as longrope


def config_from_hf(cfg: HFConfig, name: str) -> ModelConfig:
    """Phi3Config fields (defaults: the Phi3Config class defaults) -> ModelConfig."""
    size = {key: cfg.positive_integer(key, DEFAULTS[key]) for key in llama.SHAPE_KEYS}
    d, n_heads = size["hidden_size"], size["num_attention_heads"]
    # Phi3Config has no head_dim field; Phi3Attention and its rotary embedding read one a
    # config.json has (getattr(config, "head_dim", ...), 4.57 and 5.23)
    stated = cfg.optional_positive_integer("head_dim")
    if stated is None and d % n_heads:
        cfg.fail("num_attention_heads", n_heads, f"hidden_size ({d}) must be divisible by it")
    head_dim = d // n_heads if stated is None else stated
    max_seq_len = size["max_position_embeddings"]
    theta, fraction, scaling = rope_fields(cfg, head_dim, max_seq_len)
    window = cfg.optional_positive_integer("sliding_window")  # Phi3Config: None, no window
    if window is not None and window >= max_seq_len:  # never cuts inside the context (Phi-3-mini-128k's
        window = None  # 262144): transformers' sliding mask with it is the causal mask
    n_kv = cfg.optional_positive_integer("num_key_value_heads")  # None: num_attention_heads
    return ModelConfig(
        name=name, hf_model_type=MODEL_TYPE, vocab_size=size["vocab_size"], d_model=d,
        n_layers=size["num_hidden_layers"], n_heads=n_heads, n_kv_heads=n_heads if n_kv is None else n_kv,
        head_dim=head_dim, d_ff=size["intermediate_size"], max_seq_len=max_seq_len,
        position="rope", rope_theta=theta, rope_fraction=fraction, rope_scaling=scaling,
        tie_embeddings=cfg.flag("tie_word_embeddings", DEFAULTS["tie_word_embeddings"]),
        norm="rmsnorm", norm_eps=cfg.number("rms_norm_eps", DEFAULTS["rms_norm_eps"]),
        mlp="gated", activation=cfg.activation("hidden_act", DEFAULTS["hidden_act"]),
        attn_pattern=("global",) if window is None else ("sliding",), sliding_window=window,
    )


def rope_fields(cfg: HFConfig, head_dim: int, max_seq_len: int) -> tuple[float, float, RopeScaling | None]:
    """(rope_theta, rope_fraction, rope_scaling): every spelling read, none disagreeing."""
    dicts = rope_dicts(cfg)
    _, theta = rope_number(cfg, dicts, "rope_theta", DEFAULT_THETA)
    fraction_key, fraction = rope_number(cfg, dicts, "partial_rotary_factor", 1.0)
    check_rotary_width(cfg, fraction_key, head_dim, fraction)
    original = cfg.checked_integer("original_max_position_embeddings", cfg.get(
        "original_max_position_embeddings", DEFAULTS["original_max_position_embeddings"]))
    if original <= 0:
        cfg.fail("original_max_position_embeddings", original, "expected a positive integer (LongRoPE divides by it)")
    read = [(key, scaling_of(cfg, key, params, max_seq_len, original)) for key, params in dicts]
    if len(read) == 2 and read[0][1] != read[1][1]:
        cfg.fail("rope_scaling", cfg.get("rope_scaling"), f"disagrees with rope_parameters: {read[1][1]} vs "
                 f"{read[0][1]}; transformers 5.x runs rope_scaling, which replaces rope_parameters whole")
    return theta, fraction, read[-1][1] if read else None


def scaling_of(cfg: HFConfig, key: str, params: dict, max_seq_len: int, original: int) -> RopeScaling | None:
    """The scaling one RoPE dict states: None ("default") or LongRoPE (module docstring)."""
    rest = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    kind = rest.pop("rope_type", rest.pop("type", "default"))  # 5.x keeps the legacy "type" beside it
    if kind == "default":
        scaling = None
    elif kind in LONGROPE_NAMES:
        in_dict = rest.pop("original_max_position_embeddings", original)
        if in_dict != original:
            cfg.fail(f"{key}.original_max_position_embeddings", in_dict, "transformers 5.23 replaces it with the "
                     f"top-level original_max_position_embeddings ({original})")
        factor = _optional_number(cfg, f"{key}.factor", rest.pop("factor", None))
        scaling = RopeScaling(
            kind="longrope", original_max_seq_len=original,
            # 5.23: factor <= 1 gives the attention factor 1, as lmref's factor 1 does
            factor=max(1.0, max_seq_len / original if factor is None else factor),
            attention_factor=_optional_number(cfg, f"{key}.attention_factor", rest.pop("attention_factor", None)),
            short_factor=_factors(cfg, f"{key}.short_factor", rest.pop("short_factor", None)),
            long_factor=_factors(cfg, f"{key}.long_factor", rest.pop("long_factor", None)))
    else:
        cfg.fail(f"{key}.rope_type", kind, "Phi3Config runs 'default' and 'longrope' (legacy 'su', 'yarn') only")
    if rest:
        cfg.fail(f"{key}.{sorted(rest)[0]}", rest[sorted(rest)[0]], "not a RoPE parameter lmref maps for phi3")
    return scaling


def _optional_number(cfg: HFConfig, name: str, value) -> float | None:
    """The field `name` of a RoPE dict: None when absent or null, else a finite number."""
    return None if value is None else cfg.checked_number(name, value)


def _factors(cfg: HFConfig, key: str, value) -> tuple[float, ...]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        cfg.fail(key, value, "LongRoPE needs a list of numbers, one per rotated pair")
    return tuple(float(v) for v in value)


def config_to_hf(c: ModelConfig) -> dict:
    """ModelConfig -> Phi3Config fields; ConversionError if Phi-3 cannot express it."""
    width = int(c.head_dim * c.rope_fraction)  # Phi3RotaryEmbedding's dim
    kind = "default" if c.rope_scaling is None else c.rope_scaling.kind
    check_expressible(
        c, MODEL_TYPE,
        mapped={"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len",
                "rope_theta", "rope_fraction", "rope_scaling", "tie_embeddings", "norm_eps", "activation",
                "attn_pattern", "sliding_window"},
        fixed={"position": "rope", "rope_layout": "halves", "norm": "rmsnorm", "mlp": "gated"},
        rules=[("rope_fraction", width == c.rope_dim,
                f"transformers rotates int(head_dim * partial_rotary_factor) = {width} dims, which must be even"),
               ("rope_scaling", kind in ("default", "longrope"), f"Phi3Config runs default and longrope, got {kind!r}"),
               ("attn_pattern", set(c.attn_pattern) <= {"global"} or set(c.attn_pattern) == {"sliding"},
                f"Phi-3's window is on every layer or on none, got attn_pattern={c.attn_pattern}"),
               activation_rule(c)],
    )
    fields = {
        "vocab_size": c.vocab_size, "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads, "intermediate_size": c.d_ff,
        "hidden_act": ACTIVATION_TO_HF[c.activation], "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps, "tie_word_embeddings": c.tie_embeddings, "rope_theta": float(c.rope_theta),
        "sliding_window": c.sliding_window if "sliding" in c.attn_pattern else None,
        "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,  # unknown to lmref
    }
    if c.rope_fraction != 1.0:
        fields["partial_rotary_factor"] = c.rope_fraction
    return fields | llama.stated_head_dim(c) | longrope_to_hf(c)


def longrope_to_hf(c: ModelConfig) -> dict:
    """The Hub's LongRoPE spelling (module docstring); `rope_scaling` null without it."""
    s = c.rope_scaling
    if s is None:
        return {"rope_scaling": None}
    scaling = {"type": "longrope", "short_factor": list(s.short_factor), "long_factor": list(s.long_factor)}
    if s.factor != max(1.0, c.max_seq_len / s.original_max_seq_len):
        scaling["factor"] = s.factor
    if s.attention_factor is not None:
        scaling["attention_factor"] = s.attention_factor
    return {"original_max_position_embeddings": s.original_max_seq_len, "rope_scaling": scaling}


def entries(c: ModelConfig) -> list[Entry]:
    table = [same("model.embed_tokens.weight", "embed.tokens")]
    for i in range(c.n_layers):
        h, p = f"model.layers.{i}", f"layers.{i}"
        table += [
            same(f"{h}.input_layernorm.weight", f"{p}.attn_norm.weight"),
            # rows q | k | v (nn.Linear [d_out, d_in]): the canonical columns concatenated, transposed
            Entry(f"{h}.self_attn.qkv_proj.weight", (f"{p}.attn.wq", f"{p}.attn.wk", f"{p}.attn.wv"), linear=True),
            linear(f"{h}.self_attn.o_proj.weight", f"{p}.attn.wo"),
            same(f"{h}.post_attention_layernorm.weight", f"{p}.mlp_norm.weight"),
            # rows gate | up: Phi3MLP's chunk(2), the first half the gate
            Entry(f"{h}.mlp.gate_up_proj.weight", (f"{p}.mlp.w_gate", f"{p}.mlp.w_up"), linear=True),
            linear(f"{h}.mlp.down_proj.weight", f"{p}.mlp.w_down"),
        ]
    table.append(same("model.norm.weight", "final_norm.weight"))
    if not c.tie_embeddings:
        table.append(linear("lm_head.weight", "lm_head.weight"))
    return table
