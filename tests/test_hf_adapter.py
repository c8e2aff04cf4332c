"""`--impl hf` (convert.hf_adapter.HFAdapter): transformers run on the golden cases.

The full run is `pytest conformance/ --impl hf --arch gpt2,llama,olmo*,mpt`; here, one arch
end to end, the NOT SUPPORTED path, and a deliberately broken transformers model whose
failure names the layer that was broken.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conformance.adapters import BUILTINS, load_adapter  # noqa: E402
from conformance.runner import FAIL, run_check  # noqa: E402
from conformance.store import GoldenStore  # noqa: E402
from convert.hf_adapter import HFAdapter  # noqa: E402
from impl_numpy import capture_names  # noqa: E402
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
    assert BUILTINS["hf"] == "convert.hf_adapter:HFAdapter"
    assert adapter.name == "hf" and adapter.dtype == "float32"
    assert adapter.version.startswith("transformers 5.")
    assert all(adapter.supports(c) for c in ("forward", "decode", "loss", "capture"))


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


def test_olmo_with_alibi_is_not_supported_and_says_why(store):
    results = run_arch(HFAdapter(), "olmo-alibi", store)
    assert {r.status for _, _, r in results} == {"NOT SUPPORTED"}
    message = results[0][2].message
    assert "transformers has no model for this config" in message
    assert "norm_bias=True" in message and "ALiBi" in message


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
