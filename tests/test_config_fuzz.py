"""Fuzzing ModelConfig (issue 10, acceptance of items 11 and 12).

Random fields, of the right type or not: NaN and infinities, bools where ints belong, ints past
int64 and past what Python prints, strings, lists, dicts, nested `rope_scaling` and `moe`
sub-configs, fields left out and unknown ones, through `ModelConfig(**fields)`,
`ModelConfig.from_dict(data)` and `ModelConfig.from_json(text)`.  Whatever comes in:

- a config that is refused is refused with a `ConfigError` whose message names the field (or
  says the JSON is not a config object), never a TypeError, another ValueError, an
  OverflowError or a RecursionError;
- a config that is accepted serialises, reads back equal, and counts its parameters
  (`param_count`, equal to the sum over `param_shapes` where the stack is small enough to list);
- each example (build, validate, serialise, count) allocates at most a few MB (tracemalloc),
  whatever the depth of the stack; the module first checks, by counting the lines executed,
  that a deep stack costs no more work than a shallow one.

Each example takes a few milliseconds, so each fuzz test runs 8 times the profile's examples
(ci: 200, derandomized; dev: 80; thorough: 2400), and the file stays at a few seconds under ci.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import tracemalloc
from contextlib import contextmanager
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmref.spec import PRESETS, ConfigError, ModelConfig, MoEConfig, RopeScaling, param_count, param_shapes, tiny
from lmref.spec import config as schema
from tests.work import SLACK, work

FUZZ = settings(max_examples=8 * settings.default.max_examples)  # the loaded profile's, 8 times
PEAK_BYTES = 4 * 2**20  # per example: "a few MB"

BASE = dict(
    vocab_size=11, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, d_ff=24,
    max_seq_len=32, position="rope", norm="rmsnorm", norm_eps=1e-5, mlp="gated", activation="silu",
)
# Valid starting points (as to_dict() writes them), which the fuzzer then breaks or bends.
STARTS = [ModelConfig(**BASE).to_dict()] + [c.to_dict() for c in PRESETS.values()] + [
    tiny(n).to_dict() for n in PRESETS] + [
    ModelConfig(**BASE, attn_pattern=("sliding", "global"), sliding_window=4,
                mlp_pattern=("dense", "moe"), moe=MoEConfig(n_experts=4, n_experts_per_token=2)).to_dict(),
    ModelConfig(**BASE, rope_scaling=RopeScaling(kind="longrope", factor=4.0, original_max_seq_len=8,
                                                 short_factor=(1.0, 1.0), long_factor=(2.0, 3.0))).to_dict(),
]

FIELDS = {cls: {f.name: f for f in dataclasses.fields(cls)} for cls in (ModelConfig, RopeScaling, MoEConfig)}
CHOICES = sorted({choice for literal in (schema.Norm, schema.NormPlacement, schema.Activation, schema.MlpKind,
                                         schema.Position, schema.RopeLayout, schema.RopeScalingKind,
                                         schema.AttnKind, schema.MlpLayerKind, schema.QkNorm,
                                         schema.EmbeddingScale, schema.RouterKind)
                  for choice in get_args(literal)})

# 10**4200: past every float, just under the 4300 digits Python prints (hypothesis prints a
# failing example); test_from_json_of_hostile_text goes past that limit.
HUGE_INTS = (2**63 - 1, 2**63, 10**13, 10**18, 10**400, -(10**400), 10**4200)
huge_ints = st.sampled_from(range(len(HUGE_INTS))).map(lambda i: HUGE_INTS[i])  # the strategy's repr stays short
SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 0.0)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-3, 70), st.integers(-(2**70), 2**70), huge_ints,
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_FLOATS),
    st.text(max_size=8), st.sampled_from(CHOICES + ["", "false", "true", "1e-5", "NaN"]),
)
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
    st.dictionaries(st.sampled_from(["kind", "factor", "n_experts", "x", ""]), inner, max_size=3)), max_leaves=8)
choice_lists = st.lists(st.sampled_from(CHOICES), min_size=0, max_size=5)


def plausible(name: str) -> st.SearchStrategy:
    """Values near what the field takes: many drawn configs are valid, many just not."""
    if name in ("attn_pattern", "mlp_pattern", "short_factor", "long_factor"):
        numbers = st.lists(st.one_of(st.floats(0.5, 4.0), st.sampled_from(SPECIAL_FLOATS)), max_size=5)
        return st.one_of(choice_lists, choice_lists.map(tuple), numbers, numbers.map(tuple))
    if name in ("rope_scaling", "moe"):
        return st.none()  # the sub-configs are drawn by sub_config()
    return st.one_of(st.booleans(), st.integers(1, 64), huge_ints,
                     st.floats(1e-6, 1e6), st.sampled_from(SPECIAL_FLOATS), st.sampled_from(CHOICES), st.none())


def value_for(name: str) -> st.SearchStrategy:
    return st.one_of(plausible(name), junk)


@st.composite
def sub_config(draw, cls: type, start: dict | None) -> dict | None:
    """A sub-config as a dict: a valid one bent in a few fields, or junk fields only."""
    if cls is RopeScaling:
        valid = start or dict(kind=draw(st.sampled_from(get_args(schema.RopeScalingKind))), factor=2.0,
                              original_max_seq_len=16, low_freq_factor=1.0, high_freq_factor=4.0)
    else:
        valid = start or dict(n_experts=4, n_experts_per_token=2)
    data = dict(valid)
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS[cls])), max_size=3, unique=True)):
        data[name] = draw(value_for(name))
    if draw(st.integers(0, 9)) == 0:
        del data[draw(st.sampled_from(sorted(data)))]
    return data


@st.composite
def field_dicts(draw) -> dict:
    """Keyword arguments of ModelConfig as JSON-like data (lists, dicts), mostly bent a little."""
    data = dict(draw(st.sampled_from(STARTS)))
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS[ModelConfig])), max_size=4, unique=True)):
        data[name] = draw(value_for(name))
    if draw(st.booleans()):
        data["n_layers"] = draw(st.sampled_from((1, 2, 3, 10**6, 10**13, 2**63 - 1, 2**63)))
    for key, cls in (("rope_scaling", RopeScaling), ("moe", MoEConfig)):
        how = draw(st.integers(0, 3))
        if how == 1:
            data[key] = draw(sub_config(cls, data.get(key) if isinstance(data.get(key), dict) else None))
        elif how == 2:
            data[key] = None
        if key == "moe" and isinstance(data.get(key), dict) and draw(st.booleans()):
            data["mlp_pattern"] = draw(st.sampled_from((["moe"], ["dense", "moe"], ("moe",))))
    return data


def objects(data: dict) -> dict:
    """Python keyword arguments: sub-config dicts become their classes where their keywords fit
    (a wrong keyword is a TypeError of the Python call, not of the config), lists stay lists."""
    values = dict(data)
    for key, cls in (("rope_scaling", RopeScaling), ("moe", MoEConfig)):
        sub = values.get(key)
        required = {n for n, f in FIELDS[cls].items() if f.default is dataclasses.MISSING}
        if isinstance(sub, dict) and set(sub) <= set(FIELDS[cls]) and required <= set(sub):
            values[key] = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in sub.items()})
    for key in ("attn_pattern", "mlp_pattern"):
        if isinstance(values.get(key), list) and len(values[key]) % 2:  # odd: a tuple; even: stays a list
            values[key] = tuple(values[key])
    return values


@contextmanager
def any_int_digits():
    """json.dumps of an int past Python's 4300-digit str() limit (what a hostile file holds)."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(limit)


MESSAGE = re.compile(r"^(\w+(\.\w+)?(\[\d+\])?: |unknown \w+ field\(s\): |missing required \w+ field\(s\): )")


def check(build) -> None:
    """Run `build` (one example) under the memory budget; it returns a config or raises ConfigError."""
    outcome = {}

    def example():
        try:
            config = build()
        except ConfigError as error:
            outcome["message"] = str(error)
        else:
            assert isinstance(config, ModelConfig)
            text = config.to_json()
            assert ModelConfig.from_json(text) == config
            assert ModelConfig.from_json(text).to_json() == text
            outcome["config"], outcome["count"] = config, param_count(config)

    tracemalloc.start()
    try:
        example()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"the example allocated {peak / 2**20:.1f} MiB"
    if "message" in outcome:
        message = outcome["message"]
        assert MESSAGE.match(message), f"the message names no field: {message!r}"
        assert len(message) < 1000, f"a message of {len(message)} characters"
    config = outcome.get("config")
    if config is not None and config.n_layers <= 64:
        assert outcome["count"] == sum(math.prod(shape) for shape in param_shapes(config).values())


@pytest.fixture(scope="module", autouse=True)
def no_per_layer_work():
    """The fuzzer draws stacks of 10**13 layers: work per layer fails here, on 10**5 layers
    (more lines executed than for 4 layers, or more than 1 MiB allocated), rather than exhaust
    the machine's memory in an example."""
    small = ModelConfig(**BASE)
    param_count(small)

    def build_and_count(n_layers):
        deep = dataclasses.replace(small, n_layers=n_layers)
        deep.to_json()
        param_count(deep)

    shallow, _ = work(lambda: build_and_count(4))
    lines, peak = work(lambda: build_and_count(10**5))
    assert lines < shallow + SLACK and peak < 2**20, f"10**5 layers ran {lines} lines (4 layers: {shallow}), {peak} bytes"


@FUZZ
@given(field_dicts())
def test_constructor_raises_only_config_error(data):
    """issue 10, items 11 and 12: ModelConfig(**fields) with every field present."""
    values = objects(data)
    if not set(FIELDS[ModelConfig]) >= set(values) >= {n for n, f in FIELDS[ModelConfig].items()
                                                       if f.default is dataclasses.MISSING}:
        return  # a missing or unknown keyword is the Python call's TypeError
    check(lambda: ModelConfig(**values))


@st.composite
def json_like(draw) -> dict:
    data = draw(field_dicts())
    if draw(st.integers(0, 4)) == 0:
        data[draw(st.sampled_from(["zeta_knob", "rope_type", "n_layer"]))] = draw(scalars)
    if draw(st.integers(0, 4)) == 0:
        del data[draw(st.sampled_from(sorted(data)))]
    return data


@FUZZ
@given(json_like())
def test_from_dict_raises_only_config_error(data):
    """issue 10, items 11 and 12: ModelConfig.from_dict(data), nested sub-config dicts included."""
    check(lambda: ModelConfig.from_dict(data))


@FUZZ
@given(json_like(), st.integers(0, 4), st.integers(0, 2**16))
def test_from_json_raises_only_config_error(data, cut, where):
    """issue 10, items 11 and 12: ModelConfig.from_json(text), NaN and Infinity as JSON writes
    them, ints past Python's digit limit, and (cut == 0) text cut short."""
    with any_int_digits():
        text = json.dumps(data)
    if cut == 0:
        text = text[: where % max(1, len(text))]
    check(lambda: ModelConfig.from_json(text))


@pytest.mark.parametrize("text", ['{"n_layers": ' + "[" * 50_000 + "]" * 50_000 + "}",
                                  '{"d_model": 1' + "0" * 10_000 + "}", "[" * 10, '"config"', "null", ""])
def test_from_json_of_hostile_text(text):
    """issue 10, item 11: deep nesting, an int past the digit limit, text that is no object."""
    check(lambda: ModelConfig.from_json(text))
