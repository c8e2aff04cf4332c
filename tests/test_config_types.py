"""ModelConfig's types, ranges and cost (issue 10, items 11 and 12): bool fields take only bools,
every float knob is finite and in range, sizes fit int64, and a config of any depth is built,
validated and serialised with the same work as a shallow one.  tests/test_config.py holds the
structural rules; tests/test_config_fuzz.py throws random fields at all of them.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lmref.spec import ConfigError, ModelConfig, MoEConfig, RopeScaling
from tests.test_config import LLAMA3_SCALING, SIZE_FIELDS, config_error, make
from tests.work import SLACK, work


# --- types and finiteness (issue 10, item 11) --------------------------------------------------

NAN, INF = float("nan"), float("inf")
HUGE = 10**400  # an int no float holds
YARN = dict(kind="yarn", factor=2.0, original_max_seq_len=16)
MOE = dict(n_experts=4, n_experts_per_token=2)


def with_scaling(**fields) -> dict:
    return dict(rope_scaling=RopeScaling(**fields))


def with_moe(**fields) -> dict:
    return dict(mlp_pattern=("moe",), moe=MoEConfig(**(MOE | fields)))


# field -> changes putting `v` there in a config where that field acts
BOOL_FIELDS = {
    **{name: (lambda name: lambda v: {name: v})(name) for name in (
        "embedding_norm", "tie_embeddings", "lm_head_bias", "norm_weight", "norm_bias", "norm_unit_offset",
        "qkv_bias", "attn_out_bias", "mlp_bias", "parallel_residual", "shared_attn_norm")},
    "moe.router_scales_input": lambda v: with_moe(router_scales_input=v),
    "moe.renormalize": lambda v: with_moe(renormalize=v),
    "moe.shared_expert_gate": lambda v: with_moe(shared_expert_gate=v, n_shared_experts=1),
}


@pytest.mark.parametrize("bad", ["false", "true", 0, 1, None, 1.0, np.bool_(True)], ids=repr)
@pytest.mark.parametrize("field", sorted(BOOL_FIELDS))
def test_bool_fields_accept_only_bools(field, bad):
    """issue 10, item 11: a bool field takes True or False, nothing that merely looks like one."""
    assert config_error(**BOOL_FIELDS[field](bad)) == f"{field}: must be True or False, got {bad!r}"


def test_tie_embeddings_false_as_a_json_string_is_refused():
    """issue 10, item 11: `"tie_embeddings": "false"` in a JSON config was read as true and
    dropped the head."""
    data = make().to_dict() | {"tie_embeddings": "false"}
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_json(json.dumps(data))
    assert str(info.value) == "tie_embeddings: must be True or False, got 'false'"


# optional positive-integer knobs, each where it acts
OPTIONAL_INT_FIELDS = {
    "sliding_window": lambda v: dict(attn_pattern=("sliding",), sliding_window=v),
    "attn_chunk_size": lambda v: dict(attn_pattern=("chunked",), attn_chunk_size=v),
    "query_scale_dim": lambda v: dict(query_scale_dim=v),
    "attn_temperature_floor": lambda v: dict(attn_temperature_floor=v, attn_temperature_scale=0.1),
    "rope_scaling.original_max_seq_len": lambda v: with_scaling(**(YARN | dict(original_max_seq_len=v))),
    "moe.n_experts": lambda v: with_moe(n_experts=v, n_experts_per_token=1),
    "moe.n_experts_per_token": lambda v: with_moe(n_experts_per_token=v),
    "moe.d_ff": lambda v: with_moe(d_ff=v),
}


@pytest.mark.parametrize("bad", [True, False, 2.0, "4", 0, -1, np.int64(4)], ids=repr)
@pytest.mark.parametrize("field", sorted(OPTIONAL_INT_FIELDS))
def test_int_knobs_accept_only_positive_ints(field, bad):
    """issue 10, item 11: an int field takes an int: not a bool, a float, a string or a NumPy
    scalar (which `to_json` could not write)."""
    assert config_error(**OPTIONAL_INT_FIELDS[field](bad)) == f"{field}: must be a positive integer, got {bad!r}"


@pytest.mark.parametrize("bad", [True, -1, 1.0, None], ids=repr)
def test_moe_shared_experts_is_a_non_negative_int(bad):
    """issue 10, item 11."""
    assert config_error(**with_moe(n_shared_experts=bad)) == (
        f"moe.n_shared_experts: must be a non-negative integer, got {bad!r}")


def assert_no_per_layer_work() -> None:
    """A million layers cost what four do (lines executed, bytes allocated): checked before a
    test builds a deeper config, so that work per layer fails here and cannot exhaust the
    machine's memory there."""
    make()  # imports done
    shallow, _ = work(lambda: make(n_layers=4))
    lines, peak = work(lambda: make(n_layers=10**6))
    assert lines < shallow + SLACK and peak < 2**20, f"building 10**6 layers ran {lines} lines (4 layers: {shallow}) and allocated {peak} bytes"


@pytest.mark.parametrize("field", SIZE_FIELDS)
def test_sizes_beyond_int64_are_refused(field):
    """issue 10, item 11: sizes are int64 in every backend; a bigger one is refused, and even
    an int too long to print (Python refuses str() past 4300 digits) gets a ConfigError."""
    assert_no_per_layer_work()
    assert config_error(**{field: 2**63}) == f"{field}: must be at most 2**63 - 1, got {2**63}"
    message = config_error(**{field: 10**5000})
    assert message.startswith(f"{field}: must be at most 2**63 - 1, got ") and len(message) < 200


# every float knob -> changes putting `v` there in a config where that knob acts
FLOAT_KNOBS = {
    "norm_eps": lambda v: dict(norm_eps=v),
    "rope_theta": lambda v: dict(rope_theta=v),
    "rope_theta_local": lambda v: dict(rope_theta_local=v, attn_pattern=("sliding", "global"), sliding_window=4),
    "rope_fraction": lambda v: dict(rope_fraction=v),
    "alibi_max_bias": lambda v: dict(position="alibi", alibi_max_bias=v),
    "qkv_clip": lambda v: dict(qkv_clip=v),
    "attn_softcap": lambda v: dict(attn_softcap=v),
    "final_logit_softcap": lambda v: dict(final_logit_softcap=v),
    "logit_scale": lambda v: dict(logit_scale=v),
    "logit_z_loss_coef": lambda v: dict(logit_z_loss_coef=v),
    "attn_temperature_scale": lambda v: dict(attn_temperature_floor=8, attn_temperature_scale=v),
    "rope_scaling.factor": lambda v: with_scaling(kind="linear", factor=v),
    "rope_scaling.low_freq_factor": lambda v: with_scaling(**(LLAMA3_SCALING | dict(low_freq_factor=v))),
    "rope_scaling.high_freq_factor": lambda v: with_scaling(**(LLAMA3_SCALING | dict(high_freq_factor=v))),
    "rope_scaling.beta_fast": lambda v: with_scaling(**(YARN | dict(beta_fast=v))),
    "rope_scaling.beta_slow": lambda v: with_scaling(**(YARN | dict(beta_slow=v))),
    "rope_scaling.attention_factor": lambda v: with_scaling(**(YARN | dict(attention_factor=v))),
    "moe.aux_loss_coef": lambda v: with_moe(aux_loss_coef=v),
    "moe.router_z_loss_coef": lambda v: with_moe(router_z_loss_coef=v),
}
REQUIRED_FLOATS = ("norm_eps", "rope_theta", "rope_fraction", "alibi_max_bias", "logit_scale", "logit_z_loss_coef",
                   "rope_scaling.factor", "moe.aux_loss_coef", "moe.router_z_loss_coef")


@pytest.mark.parametrize("bad", [NAN, INF, -INF, "1.0", True, [1.0], np.float32(1.0), HUGE, -HUGE],
                         ids=["nan", "inf", "-inf", "str", "True", "list", "float32", "huge", "-huge"])
@pytest.mark.parametrize("field", sorted(FLOAT_KNOBS))
def test_float_knobs_must_be_finite_real_numbers(field, bad):
    """issue 10, item 11: NaN, infinities, bools, strings and ints no float holds are refused
    (alibi_max_bias NaN gave all-NaN golden logits)."""
    message = config_error(**FLOAT_KNOBS[field](bad))
    assert message.startswith(f"{field}: must be a finite real number, got ")
    if not (type(bad) is int and abs(bad) == HUGE):
        assert message == f"{field}: must be a finite real number, got {bad!r}"
    assert len(message) < 200


@pytest.mark.parametrize("field", REQUIRED_FLOATS)
def test_required_float_knobs_refuse_none(field):
    """issue 10, item 11."""
    assert config_error(**FLOAT_KNOBS[field](None)) == f"{field}: must be a finite real number, got None"


@pytest.mark.parametrize("field", sorted(FLOAT_KNOBS))
def test_float_knobs_accept_ints_and_floats_in_range(field):
    """issue 10, item 11: JSON writes 10000.0 as 10000 at times; an int in range is a number."""
    value = {"rope_fraction": 1, "moe.aux_loss_coef": 0, "moe.router_z_loss_coef": 0, "logit_z_loss_coef": 0,
             "rope_scaling.low_freq_factor": 1,
             "rope_scaling.high_freq_factor": 4, "rope_scaling.factor": 8}.get(field, 2)
    for v in (value, float(value), np.float64(value)):
        c = make(**FLOAT_KNOBS[field](v))
        assert ModelConfig.from_json(c.to_json()) == c


RANGE_ERRORS = [
    ("alibi_max_bias", 0.0, "must be > 0"),
    ("alibi_max_bias", -8.0, "must be > 0"),
    ("rope_theta_local", 0.0, "must be > 0"),
    ("rope_theta_local", -1.0, "must be > 0"),
    ("attn_temperature_scale", 0.0, "must be > 0"),
    ("rope_scaling.low_freq_factor", 0.0, "must be > 0"),  # orig / low_freq_factor divided by zero
    ("rope_scaling.low_freq_factor", -1.0, "must be > 0"),
    ("rope_scaling.high_freq_factor", 0, "must be > 0"),
    ("rope_scaling.beta_fast", 0.0, "must be > 0"),
    ("rope_scaling.beta_slow", -1.0, "must be > 0"),
    ("rope_scaling.attention_factor", 0.0, "must be > 0"),
    ("moe.aux_loss_coef", -0.01, "must be >= 0"),
    ("moe.router_z_loss_coef", -0.001, "must be >= 0"),
    ("logit_z_loss_coef", -1e-4, "must be >= 0"),
    ("final_logit_softcap", 0.0, "must be > 0"),
    ("rope_fraction", 1.0000001, "must be in (0, 1]"),
]


@pytest.mark.parametrize("field,bad,rule", RANGE_ERRORS, ids=[f"{f}={b}" for f, b, _ in RANGE_ERRORS])
def test_float_knobs_out_of_range(field, bad, rule):
    """issue 10, item 11: what makes the math undefined (a llama3 low_freq_factor of 0 divided
    by zero at forward time) or turns the knob into something no model is, is refused."""
    assert config_error(**FLOAT_KNOBS[field](bad)) == f"{field}: {rule}, got {bad!r}"


def test_attn_temperature_floor_zero_is_refused():
    """issue 10, item 11: floor(pos / floor) with floor 0 divides by zero."""
    assert config_error(**OPTIONAL_INT_FIELDS["attn_temperature_floor"](0)) == (
        "attn_temperature_floor: must be a positive integer, got 0")


@pytest.mark.parametrize("field,bad,expected", [
    ("name", 3, "name: must be a string, got 3"),
    ("name", None, "name: must be a string, got None"),
    ("hf_model_type", 3, "hf_model_type: must be a string or None, got 3"),
    ("hf_model_type", ["llama"], "hf_model_type: must be a string or None, got ['llama']"),
])
def test_label_fields_are_strings(field, bad, expected):
    """issue 10, item 11."""
    assert config_error(**{field: bad}) == expected


@pytest.mark.parametrize("field,bad", [("norm", 5), ("position", None), ("activation", ["silu"]),
                                       ("rope_layout", np.array([1, 2])), ("qk_norm", True)])
def test_literal_fields_refuse_non_strings(field, bad):
    """issue 10, item 11: a choice field takes one of its strings; a value `==` cannot compare
    with a string (a NumPy array) is refused all the same."""
    assert config_error(**{field: bad}).startswith(f"{field}: {bad!r} is not one of [")


@pytest.mark.parametrize("field", ["attn_pattern", "mlp_pattern"])
@pytest.mark.parametrize("bad", [["global"], "global", None, 1, {"global": 1}], ids=repr)
def test_patterns_must_be_tuples(field, bad):
    """issue 10, item 11: a pattern is a tuple (a string would be read letter by letter)."""
    assert config_error(**{field: bad}) == f"{field}: must be a tuple of layer kinds, got {bad!r}"


@pytest.mark.parametrize("field,kind", [("attn_pattern", "global"), ("mlp_pattern", "dense")])
@pytest.mark.parametrize("n_layers,entries", [(1, 2), (2, 3), (3, 7)])
def test_patterns_longer_than_the_stack_are_refused_alike(field, kind, n_layers, entries):
    """issue 10, item 11: MLP and attention patterns longer than n_layers are refused the same
    way, from Python and from JSON alike."""
    expected = f"{field}: has {entries} entries for {n_layers} layers"
    assert config_error(n_layers=n_layers, **{field: (kind,) * entries}) == expected
    data = make(n_layers=n_layers).to_dict() | {field: [kind] * entries}
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert str(info.value) == expected
    assert getattr(make(n_layers=n_layers, **{field: (kind,) * n_layers}), field) == (kind,) * n_layers


LONGROPE = dict(kind="longrope", factor=4.0, original_max_seq_len=16, short_factor=(1.0,) * 2,
                long_factor=(1.5,) * 2)  # BASE rotates head_dim 4: 2 pairs


def test_longrope_factors_are_accepted():
    c = make(**with_scaling(**LONGROPE))
    assert ModelConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("field", ["short_factor", "long_factor"])
@pytest.mark.parametrize("bad,rule", [
    ([1.0, 1.0], "must be a tuple of finite real numbers, got [1.0, 1.0]"),
    ((), "must be a tuple of finite real numbers, got ()"),
    ("1.0", "must be a tuple of finite real numbers, got '1.0'"),
    ((1.0, NAN), None), ((1.0, "1"), None), ((1.0, True), None), ((INF, 1.0), None),
    ((1.0, 0.0), None), ((-1.0, 1.0), None),
    ((1.0,), "has 1 entries for rope_dim / 2 = 2 rotated pairs"),
    ((1.0,) * 3, "has 3 entries for rope_dim / 2 = 2 rotated pairs"),
    (None, "is required for kind 'longrope'"),
], ids=repr)
def test_longrope_factors_are_tuples_of_positive_numbers_one_per_pair(field, bad, rule):
    """issue 10, item 11: LongRoPE's factors are tuples of finite numbers > 0, one per rotated pair."""
    message = config_error(**with_scaling(**(LONGROPE | {field: bad})))
    if rule is not None:
        assert message == f"rope_scaling.{field}: {rule}"
    else:
        index = next(i for i, v in enumerate(bad) if not (type(v) is float and 0 < v < INF))
        assert message.startswith(f"rope_scaling.{field}[{index}]: must be ")
        assert message.endswith(f", got {bad[index]!r}")


@pytest.mark.parametrize("original", [None, 1])
def test_longrope_needs_an_original_context_of_at_least_2(original):
    """The original context O picks the factors (a sequence longer than O takes the long ones) and
    ln(O) divides the default attention factor (spec/MATH.md, "LongRoPE")."""
    assert config_error(**with_scaling(**(LONGROPE | {"original_max_seq_len": original}))) == (
        f"rope_scaling.original_max_seq_len: kind 'longrope' needs the original context, at least 2, got {original!r}")


@pytest.mark.parametrize("field,value,expected", [
    ("rope_scaling", dict(kind="linear", factor=2.0),
     "rope_scaling: must be a RopeScaling or None, got {'factor': 2.0, 'kind': 'linear'}"),
    ("rope_scaling", "linear", "rope_scaling: must be a RopeScaling or None, got 'linear'"),
    ("moe", dict(n_experts=4, n_experts_per_token=2), "moe: must be a MoEConfig or None, got {'n_experts': 4, "
                                                     "'n_experts_per_token': 2}"),
])
def test_sub_configs_must_be_their_classes(field, value, expected):
    """issue 10, item 11: a dict where a sub-config belongs is refused (from_dict builds it)."""
    changes = {field: value} | (dict(mlp_pattern=("moe",)) if field == "moe" else {})
    assert config_error(**changes) == expected


def test_every_field_has_a_validation_rule():
    """issue 10, item 11: no field of ModelConfig or of a sub-config escapes validation: a field
    added without a rule fails here."""
    from lmref.spec import validation
    from lmref.spec.config import VisionConfig

    for cls, rules in ((ModelConfig, validation.MODEL_RULES), (RopeScaling, validation.ROPE_SCALING_RULES),
                       (MoEConfig, validation.MOE_RULES), (VisionConfig, validation.VISION_RULES)):
        assert list(rules) == [f.name for f in dataclasses.fields(cls)], cls.__name__


# --- from_dict / from_json never raise anything but ConfigError (issue 10, item 11) --------------


@pytest.mark.parametrize("text,start", [
    ("{", "config: not valid JSON: "),
    ("[1, 2]", "config: expected a JSON object, got list"),
    ('{"d_model": 1' + "0" * 5000 + "}", "config: not valid JSON: "),  # Python's int digit limit
    ("[" * 100_000 + "]" * 100_000, "config: not valid JSON: "),  # json recursion
    ("NaN", "config: expected a JSON object, got float"),
])
def test_from_json_refuses_what_is_not_a_json_config(text, start):
    """issue 10, item 11."""
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_json(text)
    assert str(info.value).startswith(start)


@pytest.mark.parametrize("change,expected", [
    (dict(attn_pattern=5), "attn_pattern: must be a tuple of layer kinds, got 5"),
    (dict(mlp_pattern="dense"), "mlp_pattern: must be a tuple of layer kinds, got 'dense'"),
    (dict(rope_scaling=[1, 2]), "rope_scaling: expected a JSON object, got list"),
    (dict(moe=True), "moe: expected a JSON object, got bool"),
    ({1: 2, "zeta": 3}, "unknown config field(s): 1, zeta"),
])
def test_from_dict_refuses_malformed_values_with_config_errors(change, expected):
    """issue 10, item 11: from_dict turned any iterable into a tuple (a string letter by
    letter, an int with a TypeError) and sorted unknown keys of mixed types (TypeError)."""
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(make().to_dict() | change)
    assert str(info.value) == expected


# --- no work per layer (issue 10, item 12) -------------------------------------------------------


def test_a_deep_config_costs_what_a_shallow_one_does():
    """issue 10, item 12: `n_layers=10**13` exhausted memory while the config was built (the
    layer patterns were expanded in validation).  Building, validating, serialising and reading
    back a config take no time or memory per layer.  Depths grow, so that work per layer fails
    at the first one, before a deeper one could exhaust memory."""
    moe = MoEConfig(n_experts=4, n_experts_per_token=2)
    make()  # imports done

    def build(n_layers):
        c = make(n_layers=n_layers, attn_pattern=("sliding", "global", "chunked"), sliding_window=4,
                 attn_chunk_size=8, mlp_pattern=("dense", "moe"), moe=moe)
        assert ModelConfig.from_json(c.to_json()) == c
        dataclasses.replace(c, name="again")

    shallow, _ = work(lambda: build(6))
    for n_layers in (10**6, 10**13, 2**63 - 1):
        lines, peak = work(lambda: build(n_layers))
        assert lines < shallow + SLACK, (n_layers, lines, shallow)
        assert peak < 2**20, (n_layers, peak)
