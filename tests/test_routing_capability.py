"""The routing capability (conformance/routing.py): the golden MoE cases keep every routing gap
above the margin, a flipped expert FAILs with the layer, the token and both logits, and a
malformed routing result is a FAIL, never a pass."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lmref import impl_numpy
from lmref.conformance import cases
from lmref.conformance.numpy_adapter import NumpyAdapter
from lmref.conformance.routing import ROUTING_MARGIN, smallest_gaps
from lmref.conformance.runner import FAIL, NOT_SUPPORTED, PASS, run_check
from lmref.conformance.store import GoldenStore

STORE = GoldenStore()
MOE_CASES = [(arch, name) for arch in STORE.archs() for name in STORE.case_names(arch)
             if "routing" in STORE.load_meta(arch, name)]


def test_every_moe_arch_has_routing_cases():
    archs = {arch for arch, _ in MOE_CASES}
    assert {"mixtral-8x7b", "mixtral-8x22b", "dbrx", "qwen1.5-moe-a2.7b", "qwen2-57b-a14b", "qwen3-30b-a3b",
            "olmoe-1b-7b"} <= archs
    for arch in archs:
        assert len(STORE.case_names(arch)) == sum(a == arch for a, _ in MOE_CASES), arch  # every case routes


@pytest.mark.parametrize("arch,name", MOE_CASES, ids=[f"{a}-{n}" for a, n in MOE_CASES])
def test_no_stored_token_is_within_the_margin_of_a_flip(arch, name):
    """Recomputed from the golden: every token's k-th and (k+1)-th router logits, at every MoE
    layer, are at least ROUTING_MARGIN apart, and case.json records the smallest gap."""
    case = STORE.load(arch, name)
    captured: dict = {}
    impl_numpy.forward(case.config, case.params(), case.tokens, capture=captured)
    gaps = smallest_gaps(case.config, captured)
    assert gaps.min() >= ROUTING_MARGIN
    assert case.meta["routing"]["required_margin"] == ROUTING_MARGIN
    assert case.meta["routing"]["smallest_gap"] == pytest.approx(gaps.min(), rel=1e-9)


class FlipsOneToken(NumpyAdapter):
    """The golden's routing with one token's k-th expert swapped for its (k+1)-th."""

    def __init__(self, layer: str, b: int, s: int):
        self.where = (layer, b, s)

    def routing(self, config, params, tokens):
        out = super().routing(config, params, tokens)
        layer, b, s = self.where
        z = self.capture(config, params, tokens)[f"{layer}.router"][b, s]
        ranked = np.argsort(-z, kind="stable")
        k = config.moe.n_experts_per_token
        chosen = out[layer][b, s]
        chosen[chosen == ranked[k - 1]] = ranked[k]
        return out


def test_a_flipped_expert_fails_naming_the_layer_the_token_and_both_logits():
    case = STORE.load("mixtral-8x7b", "prefill-b3-s13")
    result = run_check(case, FlipsOneToken("layers.1", 2, 9), "routing")
    assert result.status == FAIL
    assert result.metrics["flipped"] == 1 and result.metrics["tokens_routed"] == 2 * 3 * 13
    ranked = case.expected["routing.layers.1"][2, 9]  # the golden's top 3, best first
    logits = case.expected["routing_logits.layers.1"][2, 9]
    assert "layers.1, batch 2, position 9" in result.message
    assert f"expert {ranked[1]} (golden logit {logits[1]:.6g}) not chosen" in result.message
    assert f"expert {ranked[2]} (golden logit {logits[2]:.6g}) chosen instead" in result.message
    assert "more than rounding moves them: the routing is wrong" in result.message


def test_the_golden_passes_its_own_routing():
    for arch, name in MOE_CASES[:4]:
        assert run_check(STORE.load(arch, name), NumpyAdapter(), "routing").status == PASS


class Returns(NumpyAdapter):
    def __init__(self, make):
        self.make = make

    def routing(self, config, params, tokens):
        return self.make(super().routing(config, params, tokens), config)


@pytest.mark.parametrize("make,phrase", [
    (lambda r, c: [], "expected a dict"),
    (lambda r, c: {}, "no choice for MoE layer(s) layers.0, layers.1"),
    (lambda r, c: {k: v[..., :1] for k, v in r.items()}, "expected (3, 13, 2) = [batch, seq, k]"),
    (lambda r, c: {k: v.astype(np.float64) for k, v in r.items()}, "expected integer expert indices"),
    (lambda r, c: {k: v + c.moe.n_experts for k, v in r.items()}, "outside [0, 8)"),
    (lambda r, c: {k: v.tolist() + [[1]] for k, v in r.items()}, "is a list that np.asarray cannot convert"),
])
def test_a_malformed_routing_result_is_a_fail(make, phrase):
    result = run_check(STORE.load("mixtral-8x7b", "prefill-b3-s13"), Returns(make), "routing")
    assert result.status == FAIL and "invalid result" in result.message and phrase in result.message


def test_an_adapter_without_routing_is_not_supported():
    def forward(config, params, tokens):
        return impl_numpy.forward(config, params, tokens)

    result = run_check(STORE.load("dbrx", "prefill-b2-s7"), forward, "routing")
    assert result.status == NOT_SUPPORTED


def test_a_dense_case_has_no_routing_check():
    with pytest.raises(ValueError, match="has no routing check"):
        run_check(STORE.load("llama3", "prefill-b2-s7"), NumpyAdapter(), "routing")


def test_the_generator_says_so_when_no_token_clears_the_margin(monkeypatch):
    monkeypatch.setattr(cases, "ROUTING_MARGIN", 100.0)
    spec = dataclasses.replace(cases.case_specs(cases.case_config("mixtral-8x7b"))[0], seq=2)
    with pytest.raises(RuntimeError, match="none of 256 candidate tokens at batch 0, position 0"):
        cases.compute_case("mixtral-8x7b", spec)
