"""ONNX export of mixtures of experts (issue 12): the graph routes each token itself.

Two tiny models are exported once for this module: Mixtral (softmax top-2 of 8, renormalised)
and a Llama-4-style config (sigmoid top-1 of the raw logits scaling the expert input, no
renormalisation, a shared expert, every other layer dense).  (Qwen1.5-MoE's gated shared
expert is exported by tests/test_export_presets.py, every moe.* feature by
tests/test_export_features.py.)  The checks:

- the graph routes dynamically: each "moe" layer's `selected_experts.{i}` output is a TopK of
  its own router logits, and the indices its ScatterElements writes descend from that TopK
  (no routing fixed at export time: Tencent/YOLO-Master#74);
- a left-padded prefill and decode steps match the golden and the torch twin in
  onnxruntime, and the graph's chosen experts are the golden's (validate-onnx);
- two different inputs route differently through the same graph, each as the golden does,
  and a decode step routes its token as the prefill does;
- `--impl onnx` passes forward, loss (with the load-balancing loss, which must count) and
  capture of the router logits and routing on a golden case, with one export;
- the routing check of validate-onnx fails a graph that chose another expert, naming it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lmref import impl_numpy  # noqa: E402
from lmref.conformance.runner import PASS, run_check  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.conformance.tolerances import Tolerances  # noqa: E402
from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.decoder import expert_names, router_names  # noqa: E402
from lmref.export.exporter import export_onnx  # noqa: E402
from lmref.export.onnx_adapter import OnnxAdapter  # noqa: E402
from lmref.export.routing import check_routing, routed_rows  # noqa: E402
from lmref.export.runtime import CPU, DecoderSession, open_session  # noqa: E402
from lmref.export.validate import validate  # noqa: E402
from lmref.impl_numpy.moe import route  # noqa: E402
from lmref.spec import init_params, tiny  # noqa: E402
from lmref.spec.captures import moe_layers  # noqa: E402
from lmref.spec.config import MoEConfig  # noqa: E402

LLAMA4_STYLE = tiny("llama3", name="llama4-style-moe", mlp_pattern=("dense", "moe"), n_layers=4,
                    moe=MoEConfig(n_experts=6, n_experts_per_token=1, router="sigmoid_topk",
                                  router_scales_input=True, renormalize=False, n_shared_experts=1))
CONFIGS = {"mixtral": tiny("mixtral-8x7b"), "llama4-style": LLAMA4_STYLE}


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    """(bundle, params, DecoderSession) of one config, exported once for this module."""
    config = CONFIGS[request.param]
    params = init_params(config, 11)
    out = tmp_path_factory.mktemp(request.param)
    export_onnx(config, params, out)
    bundle = open_bundle(out)
    return bundle, params, DecoderSession(open_session(bundle.model_path, CPU), config)


def _ancestors(graph, name: str) -> set[str]:
    """Every value `name` is computed from (itself included), through the graph's nodes."""
    producer = {out: node for node in graph.node for out in node.output}
    seen, todo = set(), [name]
    while todo:
        value = todo.pop()
        if value not in seen:
            seen.add(value)
            todo += list(producer[value].input) if value in producer else []
    return seen


def test_each_moe_layer_routes_with_topk_then_scatter(exported):
    bundle, _, _ = exported
    config, graph = bundle.config, onnx.load(str(bundle.model_path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    topks = [node for node in graph.node if node.op_type == "TopK"]
    assert len(topks) == len(moe_layers(config))  # one choice per layer: the output is the one scattered
    scatters = [node for node in graph.node if node.op_type == "ScatterElements"]
    for router, experts in zip(router_names(config), expert_names(config)):
        topk = producer[experts]
        assert topk.op_type == "TopK" and list(topk.output).index(experts) == 1  # its indices
        assert router in _ancestors(graph, topk.input[0])  # chosen from this layer's router logits
        # the dense dispatch scatters the weights at exactly those indices, computed in the graph
        assert any(experts in _ancestors(graph, node.input[1]) for node in scatters)
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for node in scatters:
        assert "input_ids" in _ancestors(graph, node.input[1]) and node.input[1] not in constants


def test_validates_prefill_decode_and_routing(exported):
    bundle, params, _ = exported
    lines: list[str] = []
    checks = validate(bundle, params, [CPU], pad=3, steps=5, log=lines.append)
    assert [(c.reference.split()[0], c.phase) for c in checks] == [
        ("golden", "prefill"), ("golden", "decode (5 steps)"), ("torch", "prefill"), ("torch", "decode (5 steps)"),
        ("golden", "routing")]
    assert [c.failed for c in checks] == [[]] * 5, "\n".join(lines)
    routing = checks[-1]
    assert routing.compared == len(moe_layers(bundle.config)) * (2 * 11 - 3 + 2 * 5)  # every real position
    assert routing.smallest_gap >= 0.1


def _golden_choice(config, params, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The golden's experts per MoE layer, sorted [B, S, k]."""
    captured: dict = {}
    impl_numpy.forward(config, params, tokens, capture=captured)
    return {f"layers.{i}": np.sort(route(config, captured[f"layers.{i}.router"])[0], axis=-1)
            for i in moe_layers(config)}


def test_different_inputs_route_differently_through_one_graph(exported):
    bundle, params, session = exported
    config = bundle.config
    inputs = [np.stack(routed_rows(config, params, [9, 9], seed)) for seed in (1, 2)]  # [2, 9] each
    choices = []
    for tokens in inputs:
        out = session.prefill_and_decode_outputs(tokens, tokens.shape[1])
        got = {f"layers.{i}": np.sort(out[name], axis=-1) for i, name in zip(moe_layers(config), expert_names(config))}
        want = _golden_choice(config, params, tokens)
        assert all(np.array_equal(got[name], want[name]) for name in want)
        stepped = session.prefill_and_decode_outputs(tokens, 2)  # the rest one token per step
        assert all(np.array_equal(np.sort(stepped[name], axis=-1), np.sort(out[name], axis=-1))
                   for name in expert_names(config))
        choices.append(np.concatenate([got[name] for name in got], axis=-1))  # [2, 9, layers x k]
    assert not np.array_equal(choices[0], choices[1])  # the choice depends on the input: none baked in


def test_the_routing_check_fails_a_graph_that_chose_another_expert():
    config = CONFIGS["mixtral"]
    params = init_params(config, 11)
    rows = routed_rows(config, params, [7, 5], seed=0)
    captures = []
    for row in rows:
        captured: dict = {}
        impl_numpy.forward(config, params, row[None], capture=captured)
        captures.append(captured)
    graph = {name: [route(config, c[f"layers.{i}.router"])[0][0] for c in captures]
             for i, name in zip(moe_layers(config), expert_names(config))}
    assert check_routing(CPU, "golden", config, graph, captures).failed == []
    chosen = graph["selected_experts.1"][1]  # row 1, layer 1: position 3 takes an expert it did not choose
    other = next(e for e in range(config.moe.n_experts) if e not in chosen[3])
    chosen[3, 0] = other
    check = check_routing(CPU, "golden", config, graph, captures)
    assert len(check.failed) == 1 and check.failed[0].startswith("1 of 24 pairs chose other experts")
    assert f"layers.1, batch 0, position {7 + 3}" in check.failed[0] and f"expert {other}" in check.failed[0]
    assert "FAIL routing" in check.line()


@pytest.mark.parametrize("arch", ["mixtral-8x7b", "olmoe-1b-7b"])
def test_the_adapter_passes_a_golden_case_with_one_export(arch):
    """forward, loss, capture and routing of `--impl onnx` on a golden case; the loss counts
    the auxiliary terms, Mixtral's pooled load-balancing loss, OLMoE's per-layer one and its
    router z-loss (without them the loss would fail its tolerance)."""
    adapter, case = OnnxAdapter(), GoldenStore().load(arch, "prefill-b2-s7")
    results = {cap: run_check(case, adapter, cap) for cap in ("forward", "loss", "capture", "routing")}
    assert {cap: r.status for cap, r in results.items()} == dict.fromkeys(results, PASS), \
        "\n".join(r.message for r in results.values())
    assert adapter.exports == 1
    assert results["capture"].metrics["components_compared"] == len(moe_layers(case.config)) + 1  # routers, logits
    config, params = case.config, case.params()
    golden = float(case.expected["loss"].reshape(-1)[0])
    routers = [adapter.capture(config, params, case.tokens)[f"layers.{i}.router"].astype(np.float64)
               for i in moe_layers(config)]
    aux = impl_numpy.moe.auxiliary_loss(config, routers)
    tol = Tolerances().row("float32")
    ce_only = adapter.loss(config, params, case.tokens) - aux
    assert abs(ce_only - golden) > 100 * (tol.loss_atol + tol.loss_rtol * abs(golden))
