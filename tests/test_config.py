"""ModelConfig validation, derived values and serialisation (spec/config.py).

Every ConfigError must name the field and the rule it breaks (DESIGN.md, "spec/").  Whether a
backend computes a knob is not the schema's business: each backend refuses the features it
lacks by name (tests/test_features.py).
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from lmref.spec import PRESETS, ConfigError, ModelConfig, MoEConfig, RopeScaling, tiny

# A small, valid GQA config: every test below changes one thing and expects one error.
BASE = dict(
    vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=24,
    max_seq_len=32, position="rope", norm="rmsnorm", norm_eps=1e-5, mlp="gated",
    activation="silu",
)

LLAMA3_SCALING = dict(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_seq_len=16)


def make(**changes) -> ModelConfig:
    return ModelConfig(**(BASE | changes))


def config_error(**changes) -> str:
    with pytest.raises(ConfigError) as info:
        make(**changes)
    return str(info.value)


def test_base_config_is_valid():
    c = make()
    assert (c.n_heads, c.n_kv_heads) == (4, 2)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --- sizes ------------------------------------------------------------------------------------


def test_heads_not_divisible_by_kv_heads_names_both_numbers():
    message = config_error(n_heads=12, n_kv_heads=5, d_model=48)
    assert message == "n_kv_heads: n_heads (12) must be divisible by n_kv_heads (5)"


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 1), (8, 2)])
def test_mha_mqa_gqa_head_counts_are_valid(n_heads, n_kv_heads):
    c = make(n_heads=n_heads, n_kv_heads=n_kv_heads)
    assert c.kv_group_size == n_heads // n_kv_heads


SIZE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
               "max_seq_len")


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4", None])
def test_sizes_must_be_positive_integers(field, bad):
    message = config_error(**{field: bad})
    assert message == f"{field}: must be a positive integer, got {bad!r}"


@pytest.mark.parametrize("bad", [0.0, -1e-5, 0])
def test_norm_eps_must_be_positive(bad):
    assert config_error(norm_eps=bad) == f"norm_eps: must be > 0, got {bad!r}"


@pytest.mark.parametrize("field", ["attn_pattern", "mlp_pattern"])
def test_empty_layer_patterns_are_refused(field):
    assert config_error(**{field: ()}) == f"{field}: must name at least one layer kind"


def test_attn_pattern_longer_than_the_stack_is_refused():
    message = config_error(attn_pattern=("global",) * 3)
    assert message == "attn_pattern: has 3 entries for 2 layers"


# --- literal fields -------------------------------------------------------------------------

BAD_LITERALS = [
    ("norm", "batchnorm"),
    ("norm_placement", "post"),
    ("activation", "swish"),
    ("mlp", "glu"),
    ("position", "sinusoidal"),
    ("rope_layout", "gptj"),
    ("attn_pattern", ("global", "local")),
    ("mlp_pattern", ("sparse",)),
    ("qk_norm", "rms"),
    ("embedding_scale", "sqrt"),
    ("moe", MoEConfig(n_experts=4, n_experts_per_token=2, router="top2")),
]


@pytest.mark.parametrize("field,bad", BAD_LITERALS, ids=[f for f, _ in BAD_LITERALS])
def test_literal_fields_refuse_unknown_choices(field, bad):
    changes = {field: bad} | (dict(mlp_pattern=("moe",)) if field == "moe" else {})
    message = config_error(**changes)
    wrong = bad[-1] if isinstance(bad, tuple) else bad.router if field == "moe" else bad
    name = "moe.router" if field == "moe" else field
    assert message.startswith(f"{name}: {wrong!r} is not one of [")
    # the allowed choices are listed
    allowed = {"norm": "'rmsnorm'", "position": "'alibi'", "attn_pattern": "'global'",
               "activation": "'gelu_tanh'", "rope_layout": "'interleaved'"}
    if field in allowed:
        assert allowed[field] in message


def test_rope_scaling_kind_must_be_known():
    scaling = RopeScaling(**(LLAMA3_SCALING | dict(kind="ntk")))
    message = config_error(rope_scaling=scaling)
    assert message.startswith("rope_scaling.kind: 'ntk' is not one of [")
    assert "'llama3'" in message


# --- positions ------------------------------------------------------------------------------


def test_rope_scaling_needs_rope():
    scaling = RopeScaling(kind="linear", factor=2.0)
    message = config_error(position="alibi", rope_scaling=scaling)
    assert message == "rope_scaling: needs position='rope', got position='alibi'"


@pytest.mark.parametrize("bad", [0.0, -10_000.0])
def test_rope_theta_must_be_positive(bad):
    assert config_error(rope_theta=bad) == f"rope_theta: must be > 0, got {bad!r}"


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_rope_fraction_range(bad):
    assert config_error(rope_fraction=bad) == f"rope_fraction: must be in (0, 1], got {bad!r}"


def test_rope_fraction_must_rotate_at_least_one_pair():
    message = config_error(head_dim=4, rope_fraction=0.25)  # rope_dim = int(1) // 2 * 2 = 0
    assert message == "rope_fraction: rope_fraction * head_dim must cover at least 2 dims, got 0"


def test_full_rope_needs_an_even_head_dim():
    assert config_error(head_dim=5) == "head_dim: full RoPE needs an even head_dim, got 5"


def test_partial_rope_allows_an_odd_head_dim():
    c = make(head_dim=5, rope_fraction=0.5)  # rotates int(2.5) // 2 * 2 = 2 dims
    assert c.rope_dim == 2


@pytest.mark.parametrize("missing", ["original_max_seq_len", "low_freq_factor", "high_freq_factor"])
def test_llama3_scaling_requires_its_fields(missing):
    scaling = RopeScaling(**(LLAMA3_SCALING | {missing: None}))
    message = config_error(rope_scaling=scaling)
    assert message == f"rope_scaling.{missing}: is required for kind 'llama3'"


def test_llama3_scaling_high_factor_must_not_be_below_low():
    scaling = RopeScaling(**(LLAMA3_SCALING | dict(low_freq_factor=4.0, high_freq_factor=2.0)))
    message = config_error(rope_scaling=scaling)
    assert message == "rope_scaling.high_freq_factor: must be at least low_freq_factor (4.0)"


def test_llama3_scaling_with_equal_factors_is_llama4_scouts():
    scaling = RopeScaling(**(LLAMA3_SCALING | dict(low_freq_factor=1.0, high_freq_factor=1.0)))
    assert tiny("llama3.1", rope_scaling=scaling).rope_scaling.high_freq_factor == 1.0


def test_rope_scaling_factor_at_least_one():
    message = config_error(rope_scaling=RopeScaling(kind="linear", factor=0.5))
    assert message == "rope_scaling.factor: must be >= 1, got 0.5"


# --- structure ------------------------------------------------------------------------------

STRUCTURE_ERRORS = [
    (dict(shared_attn_norm=True), "shared_attn_norm: only applies with parallel_residual=True"),
    (dict(norm_bias=True), "norm_bias: RMSNorm has no bias (norm='rmsnorm')"),
    (dict(norm_unit_offset=True, norm_weight=False), "norm_unit_offset: needs norm_weight=True"),
    (dict(norm="layernorm", norm_bias=True, norm_weight=False),
     "norm_bias: a LayerNorm bias without a weight is not a layer any model uses"),
    (dict(qkv_clip=0.0), "qkv_clip: must be > 0, got 0.0"),
    (dict(logit_scale=-1.0), "logit_scale: must be > 0, got -1.0"),
    (dict(attn_pattern=("sliding",)),
     "sliding_window: a 'sliding' layer in attn_pattern needs sliding_window"),
    (dict(attn_pattern=("chunked",)),
     "attn_chunk_size: a 'chunked' layer in attn_pattern needs attn_chunk_size"),
    (dict(attn_pattern=("sliding",), sliding_window=0), "sliding_window: must be a positive integer, got 0"),
    (dict(attn_softcap=-1.0), "attn_softcap: must be > 0, got -1.0"),
    (dict(query_scale_dim=0), "query_scale_dim: must be a positive integer, got 0"),
    (dict(mlp_pattern=("moe",)), "moe: a 'moe' layer in mlp_pattern needs the moe sub-config"),
    (dict(moe=MoEConfig(n_experts=4, n_experts_per_token=2)), "moe: is set but mlp_pattern has no 'moe' layer"),
    (dict(mlp_pattern=("moe",), moe=MoEConfig(n_experts=4, n_experts_per_token=5)),
     "moe.n_experts_per_token: needs 0 < k <= n_experts (4), got 5"),
    (dict(mlp_pattern=("moe",), moe=MoEConfig(n_experts=0, n_experts_per_token=1)),
     "moe.n_experts: must be a positive integer, got 0"),
    (dict(mlp_pattern=("dense", "moe"), moe=MoEConfig(n_experts=4, n_experts_per_token=2, shared_expert_gate=True)),
     "moe.shared_expert_gate: is set but only applies with n_shared_experts > 0"),
    (dict(mlp_pattern=("moe",) * 3), "mlp_pattern: has 3 entries for 2 layers"),
]


@pytest.mark.parametrize("changes,expected", STRUCTURE_ERRORS, ids=[e.split(":")[0] + str(i) for i, (_, e) in enumerate(STRUCTURE_ERRORS)])
def test_structure_rules(changes, expected):
    assert config_error(**changes) == expected


# --- knobs the schema accepts (whichever backend computes them) -------------------------------

ACCEPTED = [
    dict(rope_scaling=RopeScaling(kind="linear", factor=4.0)),
    dict(rope_scaling=RopeScaling(**LLAMA3_SCALING)),
    dict(rope_scaling=RopeScaling(kind="dynamic", factor=2.0)),
    dict(rope_layout="interleaved"),
    dict(rope_fraction=0.5),
    dict(position="alibi"),
    dict(position="learned"),
    dict(position="none"),
    dict(position="alibi", alibi_max_bias=4.0),
    dict(norm="layernorm", norm_bias=True),
    dict(norm="layernorm", norm_weight=False),
    dict(qkv_bias=True, attn_out_bias=True, mlp_bias=True, lm_head_bias=True),
    dict(qkv_clip=8.0),
    dict(tie_embeddings=True),
    dict(mlp="plain", activation="gelu_tanh"),
    dict(activation="relu"),
    dict(activation="gelu"),
    dict(activation="gelu_tanh_truncated"),
    dict(attn_pattern=("global", "global")),
    dict(attn_pattern=("sliding", "global"), sliding_window=8),
    dict(attn_pattern=("chunked",), attn_chunk_size=8),
    dict(attn_pattern=("global_nope",)),
    dict(attn_temperature_floor=8192, attn_temperature_scale=0.1),
    dict(mlp_pattern=("dense", "moe"), moe=MoEConfig(n_experts=4, n_experts_per_token=2)),
    dict(norm_placement="sandwich", qk_norm="per_head", embedding_scale="sqrt_d_model", logit_scale=0.0625),
    dict(parallel_residual=True, shared_attn_norm=True, norm_unit_offset=True, embedding_norm=True),
    dict(final_logit_softcap=30.0, attn_softcap=50.0, query_scale_dim=8),
    dict(hf_model_type="llama"),
]


@pytest.mark.parametrize("changes", ACCEPTED, ids=[",".join(c) for c in ACCEPTED])
def test_meaningful_knobs_are_accepted(changes):
    c = make(**changes)
    for key, value in changes.items():
        assert getattr(c, key) == value


# --- derived values -------------------------------------------------------------------------


def test_derived_values():
    c = make(n_heads=8, n_kv_heads=2, head_dim=6, rope_fraction=0.5, attn_pattern=("global",))
    assert c.q_dim == 48
    assert c.kv_dim == 12
    assert c.kv_group_size == 4
    assert c.rope_dim == 2  # int(6 * 0.5) = 3 -> rounded down to even
    assert c.attn_scale == pytest.approx(6**-0.5, rel=1e-15)
    assert c.layer_attn_kinds == ("global", "global")
    assert c.layer_mlp_kinds == ("dense", "dense")


def test_config_is_frozen():
    c = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.d_model = 32  # type: ignore[misc]


def test_config_is_keyword_only():
    with pytest.raises(TypeError):
        ModelConfig(11, 16)  # type: ignore[misc]


def test_replace_revalidates():
    c = make()
    with pytest.raises(ConfigError, match=r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"):
        dataclasses.replace(c, n_kv_heads=3)


# --- serialisation --------------------------------------------------------------------------

ALL_CONFIGS = {name: c for name, c in PRESETS.items()} | {f"tiny-{n}": tiny(n) for n in PRESETS}


@pytest.mark.parametrize("name", sorted(ALL_CONFIGS))
def test_json_round_trip(name):
    c = ALL_CONFIGS[name]
    text = c.to_json()
    data = json.loads(text)
    assert data["name"] == c.name
    assert data["d_model"] == c.d_model
    back = ModelConfig.from_json(text)
    assert back == c
    assert isinstance(back.attn_pattern, tuple)
    assert isinstance(back.mlp_pattern, tuple)
    if c.rope_scaling is not None:
        assert isinstance(back.rope_scaling, RopeScaling)
    assert back.to_json() == text


def test_json_round_trip_keeps_the_moe_sub_config():
    c = make(mlp_pattern=("dense", "moe"), moe=MoEConfig(n_experts=8, n_experts_per_token=2, d_ff=12,
                                                         n_shared_experts=1, shared_expert_gate=True))
    back = ModelConfig.from_json(c.to_json())
    assert back == c and isinstance(back.moe, MoEConfig)


def test_from_dict_rejects_unknown_moe_fields():
    data = make(mlp_pattern=("moe",), moe=MoEConfig(n_experts=4, n_experts_per_token=2)).to_dict()
    data["moe"]["top_k"] = 2
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert str(info.value) == "unknown moe field(s): top_k"


def test_json_round_trip_keeps_rope_scaling_values():
    c = make(rope_scaling=RopeScaling(**LLAMA3_SCALING))
    data = json.loads(c.to_json())
    assert data["rope_scaling"]["kind"] == "llama3"
    assert data["rope_scaling"]["factor"] == 8.0
    back = ModelConfig.from_json(c.to_json())
    assert back.rope_scaling == RopeScaling(**LLAMA3_SCALING)


def test_from_dict_rejects_unknown_fields():
    data = make().to_dict() | {"zeta_knob": 1, "alpha_knob": 2}
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert str(info.value) == "unknown config field(s): alpha_knob, zeta_knob"


def test_from_dict_rejects_unknown_rope_scaling_fields():
    data = make(rope_scaling=RopeScaling(**LLAMA3_SCALING)).to_dict()
    data["rope_scaling"]["rope_type"] = "llama3"
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert str(info.value) == "unknown rope_scaling field(s): rope_type"


def test_from_dict_validates():
    data = make().to_dict() | {"n_kv_heads": 3}
    with pytest.raises(ConfigError, match=r"n_heads \(4\) must be divisible by n_kv_heads \(3\)"):
        ModelConfig.from_dict(data)


def test_from_dict_does_not_mutate_its_input():
    data = make(rope_scaling=RopeScaling(**LLAMA3_SCALING)).to_dict()
    data["attn_pattern"] = ["global"]
    snapshot = json.dumps(data, sort_keys=True)
    c = ModelConfig.from_dict(data)
    assert c.attn_pattern == ("global",)
    assert json.dumps(data, sort_keys=True) == snapshot


@pytest.mark.parametrize("field,changes,needs", [
    ("attn_temperature_scale", dict(attn_temperature_scale=0.1), "attn_temperature_floor"),
    ("alibi_max_bias", dict(alibi_max_bias=4.0), "position='alibi'"),
    ("sliding_window", dict(sliding_window=8), "'sliding' layers in attn_pattern"),
    ("rope_theta_local", dict(rope_theta_local=1e4), "position='rope' and 'sliding' layers in attn_pattern"),
    ("attn_chunk_size", dict(attn_chunk_size=8), "'chunked' layers in attn_pattern"),
])
def test_knobs_that_need_another_knob_are_refused_alone(field, changes, needs):
    """A knob that only acts together with another would be silently ignored: refused."""
    message = config_error(**changes)
    assert message.startswith(f"{field}: is set to ")
    assert message.endswith(f"but only applies with {needs}")


def test_post_norms_are_for_sequential_blocks_only():
    """Gemma's sandwich and OLMo 2's post-sublayer norms wrap one sublayer each: a parallel
    block (one residual sum of both branches) has no place for them."""
    for placement in ("sandwich", "post_sublayer"):
        assert config_error(parallel_residual=True, norm_placement=placement) == (
            f"norm_placement: {placement!r} is defined for sequential blocks only (parallel_residual=True takes 'pre')")
