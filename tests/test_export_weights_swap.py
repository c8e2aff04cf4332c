"""Re-weighting one trace per config (export/reweight.py) instead of exporting each weights.

- For archs of different shapes (a LLaMA, a mixture of experts, LLaVA's three graphs; GPT-2's
  tied head with learned positions and biases, Gemma 2's sandwich norms and softcaps and every
  other preset in the slow sweep; MPT's ALiBi and Phi-3's LongRoPE, whose graphs lift the
  model's ConfigTensors as constants),
  the graphs of weights B re-weighted from a trace of weights A are the graphs a direct
  export of B makes: the same initializers, bit for bit, the same serialized graph, and the
  same onnxruntime outputs, both through the optimizer and by export/refold.py, which takes
  every graph of every preset; the sweep over every preset is `slow`.
- The guards refuse what the re-weighting cannot account for: a wrapper parameter that no
  canonical param fills, a parameter the graph reads that is no initializer, an initializer
  that does not hold its canonical param as from_canonical lays it out, a lifted tensor
  constant that is not a config tensor under its own path, params of another shape.
- `--impl onnx` traces once over an arch's four golden cases and re-weights for the other
  three; where the template refuses the params, it exports in full and the graph is right.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
ir = pytest.importorskip("onnx_ir")

from lmref import impl_numpy  # noqa: E402
from lmref.conformance.cases import case_config  # noqa: E402
from lmref.conformance.image_cases import case_pixels, text_ids  # noqa: E402
from lmref.conformance.runner import PASS, run_check  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.decoder import OnnxDecoder  # noqa: E402
from lmref.export.exporter import export_onnx, trace  # noqa: E402
from lmref.export.features import check_exportable  # noqa: E402
from lmref.export.multimodal import open_chain  # noqa: E402
from lmref.export.onnx_adapter import OnnxAdapter  # noqa: E402
from lmref.export.reweight import ReweightError, Slot, graph_slots, laid_out, parameter_sources, template  # noqa: E402
from lmref.export.vision_graphs import DECODER  # noqa: E402
from lmref.impl_torch import Transformer  # noqa: E402
from lmref.spec import PRESETS, init_params  # noqa: E402
from lmref.spec.features import UnsupportedFeature  # noqa: E402
from lmref.spec.params import uniform01  # noqa: E402

ARCHS = ["llama3", "mixtral-8x7b", "llava-1.5-7b", "mpt", "phi-3-mini-128k", "gemma-2b"]  # the rest: the slow sweep


def tokens(config) -> np.ndarray:
    """[2, 7] text tokens (never an image placeholder)."""
    return text_ids(config, uniform01(0, "test_export_weights_swap", 14).reshape(2, 7))


def initializers(program) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy() for name, value in program.model.graph.initializers.items()}


def graph_bytes(program) -> bytes:
    return ir.serde.serialize_model(program.model).SerializeToString()


def chain_outputs(config, params, programs, out, arch: str) -> dict[str, np.ndarray]:
    """The bundle of `programs` in onnxruntime: the decoder's outputs on TOKENS and, with a
    vision tower, the vision graph's on two images."""
    export_onnx(config, params, out, programs=programs)
    chain = open_chain(open_bundle(out))
    outputs = chain.prefill_and_decode_outputs(tokens(config), 4)
    if config.vision is not None:
        outputs |= chain.image_outputs(case_pixels(arch, "weights-swap", 0, config, 2))
    return outputs


def assert_same_graphs(config, params, reweighted: dict, direct: dict, tmp_path, arch: str) -> None:
    assert list(reweighted) == list(direct)
    for role in direct:
        got, want = initializers(reweighted[role]), initializers(direct[role])
        assert sorted(got) == sorted(want), role
        for name, value in want.items():
            assert (got[name].dtype, got[name].shape) == (value.dtype, value.shape), f"{role} {name}"
            assert got[name].tobytes() == value.tobytes(), f"{role} {name}: the values differ"
        assert graph_bytes(reweighted[role]) == graph_bytes(direct[role]), f"{role}: the graphs differ"
    got = chain_outputs(config, params, reweighted, tmp_path / "reweighted", arch)
    want = chain_outputs(config, params, direct, tmp_path / "direct", arch)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def check_swap(arch: str, tmp_path, *, refolded: bool = False) -> None:
    """Template of seed 1 re-weighted with seed 2 == a direct export of seed 2, both by
    export/refold.py (every role of the graphs where `refolded`) and through the optimizer;
    the weights really changed (the seed-2 graph is not the seed-1 graph); a second
    re-weighting gives the same graphs."""
    config = case_config(arch)
    kept, first = template(config, init_params(config, 1))
    assert kept is not None, f"{arch}: the template refused the graphs"
    assert not refolded or set(kept.refolds) == set(first), f"{arch}: refolded only {sorted(kept.refolds)}"
    second = init_params(config, 2)
    direct = trace(config, second)
    optimized = dataclasses.replace(kept, refolds={}).programs(second)
    assert_same_graphs(config, second, optimized, direct, tmp_path / "optimizer", arch)
    reweighted = kept.programs(second)
    assert_same_graphs(config, second, reweighted, direct, tmp_path, arch)
    assert graph_bytes(first[DECODER]) != graph_bytes(reweighted[DECODER])
    again = kept.programs(second)  # re-weighting leaves the template as it was
    assert [graph_bytes(again[role]) for role in again] == [graph_bytes(reweighted[role]) for role in reweighted]


@pytest.mark.parametrize("arch", ARCHS)
def test_reweighted_graphs_equal_a_direct_export(arch, tmp_path):
    check_swap(arch, tmp_path, refolded=True)


def test_refold_refuses_what_it_does_not_reproduce(monkeypatch):
    """export/refold.py gives no Refold for weights other than the optimized graph's (its folds
    then differ from what it recomputes), nor for a cone through an op it does not compute
    (Gemma's norm weight + 1 without Add); the Template then runs the optimizer."""
    from lmref.export import refold as refold_module
    from lmref.export.reweight import graph_copy

    config = case_config("gemma-2b")
    kept, programs = template(config, init_params(config, 1))
    assert set(kept.refolds) == {DECODER}
    traced, optimized = kept.graphs[DECODER], kept.refolds[DECODER].optimized
    other = init_params(config, 2)
    assert refold_module.refold(traced, graph_copy(optimized), kept.slots[DECODER], other, laid_out) is None
    monkeypatch.delitem(refold_module.FOLDS, "Add")
    assert refold_module.refold(traced, graph_copy(optimized), kept.slots[DECODER], init_params(config, 1),
                                laid_out) is None


def exportable(name: str) -> bool:
    try:
        check_exportable(case_config(name))
    except UnsupportedFeature:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("arch", [name for name in PRESETS if name not in ARCHS and exportable(name)])
def test_every_preset_reweights_as_a_direct_export(arch, tmp_path):
    check_swap(arch, tmp_path, refolded=True)


def test_the_template_refuses_a_wrapper_parameter_no_canonical_param_fills():
    config = case_config("llama3")
    model = Transformer.from_canonical(config, init_params(config, 0))
    wrapper = OnnxDecoder.of(model)
    assert len(parameter_sources(model, wrapper)) == len(init_params(config, 0))
    wrapper.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ReweightError, match="module parameter extra is filled from no canonical param"):
        parameter_sources(model, wrapper)


def fake_program(parameters: dict[str, str], initializers: dict[str, np.ndarray], lifted: dict[str, torch.Tensor]):
    """What graph_slots reads of a traced program: its signature, its placeholders (each with a
    user but `p_unused`), its lifted constants ({name: tensor}) and its graph's initializers."""
    graph = ir.Graph([], [], nodes=[], initializers=[ir.Value(name=name, const_value=ir.tensor(v, name=name))
                                                     for name, v in initializers.items()])
    signature = SimpleNamespace(inputs_to_parameters=parameters,
                                inputs_to_lifted_tensor_constants={f"c_{i}": n for i, n in enumerate(lifted)})
    nodes = [SimpleNamespace(op="placeholder", name=name, users={} if name == "p_unused" else {"user": None})
             for name in [*parameters, *signature.inputs_to_lifted_tensor_constants]]
    exported = SimpleNamespace(graph_signature=signature, constants=lifted, graph=SimpleNamespace(nodes=nodes))
    return SimpleNamespace(exported_program=exported, model=ir.Model(graph, ir_version=10))


def test_graph_slots_map_parameters_and_refuse_what_they_cannot_account_for():
    params = {"layers.0.attn.wq": np.arange(6.0).reshape(2, 3), "embed.tokens": np.ones((4, 2))}
    sources = {"model.wq.weight": ("layers.0.attn.wq", True), "model.embed.weight": ("embed.tokens", False),
               "model.head.weight": ("embed.tokens", False)}  # a tied head: an alias of the embedding
    wq = params["layers.0.attn.wq"].T.astype(np.float32)  # nn.Linear's [d_out, d_in]
    reads = {"p_wq": "model.wq.weight", "p_embed": "model.embed.weight", "p_head": "model.head.weight",
             "p_unused": "model.unused.weight"}  # a parameter without users: not in the ONNX graph, not needed
    held = {"model.wq.weight": wq, "model.head.weight": np.ones((4, 2), np.float32)}
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float64)
    config_tensors = {"model.constants.alibi_slopes": slopes}  # config_tensor_paths of the wrapper
    scale = {"model.embed.lifted_tensor_0": torch.tensor(8.0),  # a 0-d constant forward makes: admitted
             "model.constants.alibi_slopes": slopes.clone()}  # a config tensor by its path: admitted
    assert graph_slots(fake_program(reads, held, scale), sources, params, config_tensors) == {
        "model.wq.weight": Slot("layers.0.attn.wq", True, (3, 2)),
        "model.head.weight": Slot("embed.tokens", False, (4, 2))}
    # A stamped layer's parameter (export/stamping.py): an initializer under a wrapper parameter's
    # path that the traced program did not lift; it is mapped and checked as a lifted one is.
    stamped_sources = sources | {"model.layers.1.wq.weight": ("layers.1.attn.wq", True)}
    stamped_params = params | {"layers.1.attn.wq": params["layers.0.attn.wq"] * 2}
    stamped = held | {"model.layers.1.wq.weight": wq * 2}
    assert graph_slots(fake_program(reads, stamped, scale), stamped_sources, stamped_params, config_tensors)[
        "model.layers.1.wq.weight"] == Slot("layers.1.attn.wq", True, (3, 2))
    with pytest.raises(ReweightError, match="model.layers.1.wq.weight does not hold 'layers.1.attn.wq'"):
        graph_slots(fake_program(reads, held | {"model.layers.1.wq.weight": wq}, scale), stamped_sources,
                    stamped_params, config_tensors)
    refusals = {
        "does not hold 'layers.0.attn.wq'": fake_program(reads, held | {"model.wq.weight": wq + 1}, scale),
        "is not a float32 tensor": fake_program(reads, held | {"model.wq.weight": wq.astype(np.float64)}, scale),
        "model.wq.weight of the traced graph is not an initializer": fake_program(
            reads, {"model.head.weight": held["model.head.weight"]}, scale),
        r"lifts tensor constants \['model.copy'\]": fake_program(reads, held, scale | {"model.copy": torch.ones(3, 2)}),
        r"lifts tensor constants \['model.constants.alibi_slopes'\]": fake_program(  # not the config's value
            reads, held, scale | {"model.constants.alibi_slopes": slopes + 1}),
        r"lifts tensor constants \['model.slopes'\]": fake_program(  # the config's value under another path
            reads, held, scale | {"model.slopes": slopes.clone()}),
        "model.other of the traced graph is not a parameter of the wrapper": fake_program(
            reads | {"p_other": "model.other"}, held, scale)}
    for message, program in refusals.items():
        with pytest.raises(ReweightError, match=message):
            graph_slots(program, sources, params, config_tensors)


def test_weights_written_in_place_between_calls_are_new_weights():
    """The adapter finds the last call's weights by comparing against its own copy of them
    (export/onnx_adapter.py `_key`): the same weights reuse the session; the same arrays
    written into by the caller are new weights, with their own session."""
    adapter, config = OnnxAdapter(), case_config("gpt2")
    params, ids = init_params(config, 3), tokens(config)
    first = adapter.forward(config, params, ids)
    np.testing.assert_array_equal(adapter.forward(config, params, ids), first)
    assert (adapter.exports, adapter.rewrites, len(adapter._sessions)) == (1, 0, 1)
    params["layers.0.mlp_norm.weight"] *= 2.0  # the same dict and arrays, new values
    second = adapter.forward(config, params, ids)
    assert (adapter.exports, adapter.rewrites, len(adapter._sessions)) == (1, 1, 2)
    np.testing.assert_allclose(second, impl_numpy.forward(config, params, ids), rtol=1e-4, atol=1e-4)
    assert np.abs(second - first).max() > 1e-3


def test_laid_out_refuses_params_of_another_shape_or_missing():
    slot = Slot("layers.0.mlp.w_up", True, (5, 3))  # canonical [3, 5], stored [5, 3]
    np.testing.assert_array_equal(laid_out({"layers.0.mlp.w_up": np.ones((3, 5))}, slot, "w"), np.ones((5, 3)))
    with pytest.raises(ReweightError, match=r"has shape \(3, 5\) as laid out, the graph's is \(5, 3\)"):
        laid_out({"layers.0.mlp.w_up": np.ones((5, 3))}, slot, "w")
    with pytest.raises(ReweightError, match="the params have no 'layers.0.mlp.w_up'"):
        laid_out({}, slot, "w")


def test_the_adapter_traces_once_per_config_and_falls_back_where_the_template_refuses():
    adapter, store = OnnxAdapter(), GoldenStore()
    cases = [store.load("gpt2", name) for name in ("prefill-b2-s7", "prefill-b3-s13", "decode-b2-p5-n6",
                                                   "long-b2-s160")]
    assert len({case.meta["weights"]["seed"] for case in cases}) == 4  # four weights of one config
    for case in cases:
        result = run_check(case, adapter, "forward")
        assert result.status == PASS, result.message
    assert (adapter.exports, adapter.rewrites) == (1, 3)

    config = cases[0].config
    kept = adapter._templates[config]
    bogus = {role: {name: dataclasses.replace(slot, shape=(1,)) for name, slot in slots.items()}
             for role, slots in kept.slots.items()}
    adapter._templates[config] = dataclasses.replace(kept, slots=bogus)  # no params fit it: refused
    params = init_params(config, 9)
    logits = adapter.forward(config, params, tokens(config))
    assert (adapter.exports, adapter.rewrites) == (2, 3)  # exported in full
    golden = impl_numpy.forward(config, params, tokens(config))
    np.testing.assert_allclose(logits, golden, rtol=1e-4, atol=1e-4)
