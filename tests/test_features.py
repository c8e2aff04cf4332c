"""The feature vocabulary (spec/features.py) and what each backend declares from it.

Drift checks: every config field gives meaning to some feature (or is a size or a label), every
backend declares names of the one vocabulary, the ONNX export declares nothing the torch twin
lacks, every stored golden case is computable by the golden.  And the point of it all: a
feature that only the golden declares is NOT SUPPORTED under another backend, never a PASS.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from lmref.conformance.runner import NOT_SUPPORTED, PASS, run_check
from lmref.conformance.store import GoldenStore
from lmref.spec import features as vocabulary
from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.features import (
    FEATURES, LABEL_FIELDS, SIZE_FIELDS, Feature, UnsupportedFeature, check_supported, declare, required_features,
)
from lmref.spec.presets import PRESETS, tiny

BACKENDS = {  # backend -> the module that declares its FEATURES
    "numpy": "lmref.impl_numpy.features",
    "torch": "lmref.impl_torch.features",
    "jax": "lmref.impl_jax.features",
    "onnx": "lmref.export.features",
    "hf": "lmref.convert.features",
}


def declared(backend: str) -> frozenset[str]:
    return importlib.import_module(BACKENDS[backend]).FEATURES


def test_every_config_field_is_read_by_a_feature_or_is_a_size_or_a_label():
    read = {name for f in FEATURES.values() for name in f.fields}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert fields - read - set(SIZE_FIELDS) - set(LABEL_FIELDS) == set()
    assert read <= fields, f"features read unknown fields {read - fields}"


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_each_backend_declares_names_of_the_vocabulary(backend):
    names = declared(backend)
    assert isinstance(names, frozenset) and names, f"{backend} declares no features"
    assert names <= set(FEATURES), f"{backend} declares unknown features {sorted(names - set(FEATURES))}"


def test_hf_declares_per_model_type():
    by_type = importlib.import_module(BACKENDS["hf"]).FEATURES_BY_TYPE
    assert set(by_type) >= {"gpt2", "llama", "olmo", "mpt"}
    assert frozenset().union(*by_type.values()) == declared("hf")


def test_the_export_computes_nothing_the_torch_twin_does_not():
    assert declared("onnx") <= declared("torch")


def test_declare_refuses_an_unknown_name():
    with pytest.raises(KeyError, match="unknown feature name"):
        declare("attn.sliding", "attn.wormhole")


@pytest.mark.parametrize("arch", GoldenStore().archs())
def test_every_stored_arch_is_computable_by_the_golden(arch):
    check_supported(tiny(arch), "numpy", declared("numpy"))


def test_unsupported_feature_names_every_missing_feature_and_its_field():
    yarn = RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=16)
    config = dataclasses.replace(tiny("llama3"), rope_scaling=yarn)
    with pytest.raises(UnsupportedFeature) as info:
        check_supported(config, "numpy", declared("numpy"))
    assert info.value.missing == ("rope.scaling.yarn",)
    message = str(info.value)
    assert message.startswith("the numpy backend does not implement feature(s) of config 'llama3-tiny'")
    assert "field rope_scaling" in message
    assert isinstance(info.value, NotImplementedError)  # the suite's NOT SUPPORTED


def test_required_features_follow_the_config():
    assert "positions.rope" in required_features(PRESETS["llama3"])
    assert "rope.scaling.llama3" in required_features(PRESETS["llama3.1"])
    assert "rope.scaling.llama3" not in required_features(PRESETS["llama3"])
    assert {"positions.alibi", "head.tied"} <= required_features(PRESETS["mpt"])


@pytest.fixture
def throwaway_knob(monkeypatch):
    """A feature every config needs, declared by the golden alone (a knob just landed there)."""
    knob = Feature("test.throwaway", ("name",), lambda c: True, "a throwaway knob of this test")
    monkeypatch.setitem(vocabulary.FEATURES, knob.name, knob)
    import lmref.impl_numpy.model as golden_model

    monkeypatch.setattr(golden_model, "FEATURES", golden_model.FEATURES | {knob.name})
    return knob


@pytest.mark.parametrize("impl", ["torch", "jax"])
def test_a_feature_only_the_golden_declares_is_not_supported_elsewhere(throwaway_knob, impl):
    from lmref.conformance.adapters import load_adapter

    case = GoldenStore().load("llama3", "prefill-b2-s7")
    assert run_check(case, load_adapter("numpy"), "forward").status == PASS
    for capability in ("forward", "loss", "capture"):
        result = run_check(case, load_adapter(impl), capability)
        assert result.status == NOT_SUPPORTED, result.message
        assert "test.throwaway" in result.message


@pytest.mark.parametrize("impl", ["numpy", "torch", "jax", "hf"])
def test_every_backend_captures_the_names_of_spec_captures(impl):
    """The capture names are spec/captures.py's, in its order, for every backend that captures."""
    from lmref.conformance.adapters import load_adapter
    from lmref.conformance.runner import case_params
    from lmref.spec.captures import capture_names

    case = GoldenStore().load("mistral-7b", "prefill-b2-s7")
    captured = load_adapter(impl).capture(case.config, case_params(case.config, case.meta["weights"]["seed"]),
                                          case.tokens)
    assert list(captured) == capture_names(case.config) == list(case.captures)


def test_the_property_tests_draw_every_feature_the_twins_declare():
    """tests/strategies.py's configs() and moe_configs() reach every CORE feature, so the twins'
    property tests compare each one with the golden (a feature added to CORE without a draw
    fails here)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lmref.spec.features import CORE
    from tests.strategies import configs, moe_configs

    seen: set[str] = set()

    @settings(max_examples=600, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(configs(), moe_configs()))
    def draw(config):
        seen.update(required_features(config))

    draw()
    assert set(CORE) - seen == set()
