"""`--impl hf` (convert.hf_adapter.HFAdapter): transformers run on the golden cases.

The full run is `pytest conformance/ --impl hf --arch gpt2,llama,olmo*,mpt`; here, one arch
end to end, the NOT SUPPORTED paths (no transformers type; a feature the type lacks; a value
the type hard-codes), and a deliberately broken transformers model whose failure names the
layer that was broken.
"""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from lmref.conformance.adapters import BUILTINS, CAPABILITIES, load_adapter  # noqa: E402
from lmref.conformance.runner import FAIL, NOT_SUPPORTED, run_check  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.convert import SUPPORTED_MODEL_TYPES  # noqa: E402
from lmref.convert.hf_adapter import HFAdapter  # noqa: E402
from lmref.spec.captures import capture_names  # noqa: E402
from tests.controls import run_arch  # noqa: E402


class BrokenLayer1Attention(HFAdapter):
    """transformers with layer 1's attention output projection scaled by 1.2."""

    name = "hf-broken"

    def build_model(self, config, params):
        model = super().build_model(config, params)
        with torch.no_grad():
            model.get_submodule("model.layers.1.self_attn.o_proj").weight.mul_(1.2)
        return model


@pytest.fixture(scope="module")
def store():
    return GoldenStore()


def test_hf_is_a_builtin_with_its_version():
    adapter = load_adapter("hf")
    assert BUILTINS["hf"] == "lmref.convert.hf_adapter:HFAdapter"
    assert adapter.name == "hf" and adapter.dtype == "float32"
    assert adapter.version.startswith("transformers 5.")
    assert all(adapter.supports(c) for c in CAPABILITIES)


def test_every_check_of_mpt_passes(store):
    """MPT: ALiBi with 6 heads, transformers' own KV cache, the whole capture mapping."""
    results = run_arch(HFAdapter(), "mpt", store)
    assert [(case, cap, r.status) for case, cap, r in results if r.status != "PASS"] == []
    captures = [r for _, cap, r in results if cap == "capture"]
    assert captures and all(r.metrics["missing"] == [] for r in captures)  # every golden component mapped


def test_capture_returns_every_golden_component(store):
    case = store.load("llama3.1", "prefill-b2-s7")
    captured = HFAdapter().capture(case.config, case.params(), case.tokens)
    assert list(captured) == capture_names(case.config)


@pytest.mark.parametrize("arch", ["olmo-alibi", "palm-8b"])  # OLMo with ALiBi, PaLM: no transformers class
def test_an_arch_without_a_transformers_class_is_not_supported_and_says_why(store, arch):
    results = run_arch(HFAdapter(), arch, store)
    assert {r.status for _, _, r in results} == {"NOT SUPPORTED"}
    message = results[0][2].message
    assert "transformers has no model for this config" in message
    assert "has no transformers model type (hf_model_type is None)" in message
    assert all(t in message for t in SUPPORTED_MODEL_TYPES)


def _as(case, **changes):
    """`case` with its config changed: NOT SUPPORTED is decided before any number is compared."""
    return dataclasses.replace(case, config=dataclasses.replace(case.config, **changes))


@pytest.mark.parametrize("model_type, named", [
    ("olmo", ["positions.alibi", "ALiBi", "norm.bias", "field norm_bias"]),
    ("mpt", ["norm.bias", "field norm_bias", "mlp.gated", "activation.silu"]),
])
def test_olmo_alibi_as_an_existing_type_names_the_features_that_type_lacks(store, model_type, named):
    case = _as(store.load("olmo-alibi", "prefill-b2-s7"), hf_model_type=model_type)
    result = run_check(case, HFAdapter(), "forward")
    assert result.status == NOT_SUPPORTED
    assert f"the hf ({model_type}) backend does not implement feature(s)" in result.message
    assert all(n in result.message for n in named), result.message


@pytest.mark.parametrize("changes, named", [
    (dict(attn_softcap=30.0), ["attn.softcap", "field attn_softcap"]),
    (dict(rope_fraction=0.5), ["rope.partial", "field rope_fraction"]),
    (dict(norm="layernorm"), ["norm.layernorm"]),
])
def test_a_feature_llama_lacks_is_not_supported_by_name(store, changes, named):
    result = run_check(_as(store.load("llama3", "prefill-b2-s7"), **changes), HFAdapter(), "forward")
    assert result.status == NOT_SUPPORTED
    assert all(n in result.message for n in named), result.message


def test_a_value_the_type_hard_codes_is_not_supported_with_the_converters_reason(store):
    """Every feature is LLaMA's, but its attention_bias covers q, k, v and o together."""
    result = run_check(_as(store.load("llama3", "prefill-b2-s7"), qkv_bias=True), HFAdapter(), "forward")
    assert result.status == NOT_SUPPORTED
    assert "transformers has no model for this config" in result.message
    assert "attn_out_bias: transformers' attention_bias" in result.message


def test_an_unknown_model_type_is_not_supported_and_lists_the_supported(store):
    result = run_check(_as(store.load("gpt2", "prefill-b2-s7"), hf_model_type="rwkv"), HFAdapter(), "forward")
    assert result.status == NOT_SUPPORTED
    assert "hf_model_type 'rwkv' is not supported" in result.message
    assert all(t in result.message for t in SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("capability", ["forward", "loss"])
def test_a_broken_transformers_model_is_located_to_the_broken_layer(store, capability):
    case = store.load("llama3", "prefill-b2-s7")
    result = run_check(case, BrokenLayer1Attention(), capability)
    assert result.status == FAIL
    assert "first diverging component: layers.1.attn" in result.message


def test_the_broken_model_passes_until_the_broken_layer(store):
    case = store.load("llama3", "prefill-b2-s7")
    result = run_check(case, BrokenLayer1Attention(), "capture")
    assert result.status == FAIL
    nmse = result.metrics["nmse"]
    assert all(nmse[name] < 1e-10 for name in ("embed", "layers.0.attn", "layers.0.mlp", "layers.0.out"))
    assert result.metrics["first"] == "layers.1.attn"
