"""Tracing one layer of each kind and stamping the others (export/stamping.py).

- Layers are of one kind when their plans agree but for the index and their parameters have
  the same names and shapes: Gemma 3's sliding and global layers are two kinds, Llama 4
  Maverick's dense and MoE layers with chunked or NoPE attention three.  A layer's attention
  and feed-forward are stamped from two traced layers where that traces fewer: Maverick's
  chunked MoE layer from its chunked dense and NoPE MoE layers.  A parallel block is not split.
- The stamped decoder graph, optimized, is the fully traced one in everything but the names of
  intermediate values and the order of nodes: the same inputs and outputs with their shapes,
  the same initializers bit for bit, the same count of each op, and bit-for-bit the same
  onnxruntime outputs on a padded batch with a past, for sliding and global layers (Gemma 3),
  chunked and NoPE layers, dense and with a mixture of experts, some stamped by sublayer
  (Llama 4 Maverick: router logits and chosen experts per layer), LLaVA's inputs_embeds
  decoder, and a model of one kind (LLaMA).
- A graph whose layers are not separable is refused (StampError), and the export then traces
  every layer: a node of two layers, a layer reading a hidden state other than its input, a
  layer's value as another graph output, a layer's output not computed by its nodes, a
  feed-forward reading its attention's values but the mid-layer residual.  No preset's case
  config is refused (the `slow` sweep), and `--impl onnx` checks every stamped graph against
  the golden.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")
ir = pytest.importorskip("onnx_ir")

from lmref.conformance.cases import case_config  # noqa: E402
from lmref.export import exporter  # noqa: E402
from lmref.export.decoder import KV, window_pasts  # noqa: E402
from lmref.export.exporter import export_graph, graph_specs  # noqa: E402
from lmref.export.features import check_exportable  # noqa: E402
from lmref.export.stamp_graph import HIDDEN, MID, StampError, stamp  # noqa: E402
from lmref.export.stamping import layer_kinds, layer_sources, stamp_traced, traced_spec  # noqa: E402
from lmref.export.vision_graphs import DECODER  # noqa: E402
from lmref.impl_torch import Transformer  # noqa: E402
from lmref.spec import PRESETS, init_params  # noqa: E402
from lmref.spec.features import UnsupportedFeature  # noqa: E402
from lmref.spec.plan import layer_plan, sublayer_plans  # noqa: E402

CONFIGS = {  # the case configs, or three-layer versions: two layers of the first kind, one of another
    "gemma3-4b": {"n_layers": 3, "attn_pattern": ("sliding", "sliding", "global")},
    "llama4-maverick": {},  # chunked dense, chunked MoE (stamped from two layers' sublayers), chunked dense, NoPE MoE
    "llava-1.5-7b": {},
    "llama3": {},
}


def config_of(arch: str):
    return dataclasses.replace(case_config(arch), **CONFIGS[arch])


def decoder_spec(config):
    return graph_specs(config, init_params(config, 3))[1][DECODER]


def full_graph(spec):
    """The decoder traced with every layer (export/exporter.py's route without stamping)."""
    return exporter._exported(spec, optimize=True)


def feeds(config, session) -> dict[str, np.ndarray]:
    """A batch of 2 with a left-padded row, 4 new tokens after a past of 6."""
    rng = np.random.default_rng(0)
    batch, seq, past = 2, 4, 6
    mask = np.ones((batch, past + seq), np.int64)
    mask[1, :3] = 0
    inputs = {"attention_mask": mask, "position_ids": (np.cumsum(mask, -1) - 1)[:, -seq:]}
    if config.vision is None:
        inputs["input_ids"] = rng.integers(0, config.vocab_size, (batch, seq))
    else:
        inputs["inputs_embeds"] = rng.standard_normal((batch, seq, config.d_model)).astype(np.float32)
    for i, keep in enumerate(window_pasts(config)):
        length = past if keep is None else min(past, keep)
        for kind in KV:
            inputs[f"past_key_values.{i}.{kind}"] = rng.standard_normal(
                (batch, config.n_kv_heads, length, config.head_dim)).astype(np.float32)
    assert sorted(inputs) == sorted(i.name for i in session.get_inputs())
    return inputs


def session(program):
    return ort.InferenceSession(ir.to_proto(program.model).SerializeToString(), providers=["CPUExecutionProvider"])


def folded(weights: dict[str, np.ndarray]) -> list[tuple]:
    """The initializers that are no module parameter, by content: (dtype, shape, bytes), sorted."""
    return sorted((str(w.dtype), w.shape, w.tobytes()) for name, w in weights.items() if not name.startswith("model."))


def signature(values) -> list[tuple]:
    return [(v.name, str(v.type), str(v.shape)) for v in values]


def test_layers_of_one_plan_and_shapes_are_one_kind():
    maverick = case_config("llama4-maverick")  # chunked dense, chunked MoE, chunked dense, NoPE MoE
    assert layer_kinds(Transformer(maverick)) == [0, 1, 0, 3]
    assert layer_kinds(Transformer(case_config("gemma3-4b"))) == [0, 0, 0, 0, 0, 5]
    assert layer_kinds(Transformer(case_config("llama3"))) == [0] * case_config("llama3").n_layers


def test_a_constant_held_by_one_layer_makes_it_a_kind_of_its_own():
    """A per-layer value outside the plan (GPT-2's scale_attn_by_inverse_layer_idx, were it held
    on the module) is not copied from another layer: the layer, or its sublayer, is traced."""
    llama = Transformer(case_config("llama3"))
    llama.layers[1].attn.inverse_layer_scale = 0.5
    assert layer_kinds(llama) == [0, 1]
    maverick = Transformer(case_config("llama4-maverick"))
    maverick.layers[1].mlp.inverse_layer_scale = 0.5  # its mixture is no longer the NoPE MoE layer's
    assert layer_sources(maverick) == [(0, 0), (1, 1), (0, 0), (3, 3)]


def test_a_layer_copies_its_sublayers_from_the_fewest_traced_layers():
    """Maverick's chunked MoE layer takes its attention from the chunked dense layer and its
    mixture from the NoPE MoE layer: two layers traced, not three."""
    assert layer_sources(Transformer(case_config("llama4-maverick"))) == [(0, 0), (0, 3), (0, 0), (3, 3)]
    assert layer_sources(Transformer(case_config("gemma3-4b"))) == [(0, 0)] * 5 + [(5, 5)]
    scout = dataclasses.replace(case_config("llama4-scout"), n_layers=3, attn_pattern=("chunked", "global_nope",
                                                                                       "chunked"))
    assert layer_sources(Transformer(scout)) == [(0, 0), (1, 1), (0, 0)]


def test_each_plan_field_counts_for_the_sublayer_it_shapes():
    """spec/plan.py `sublayer_plans`: the feed-forward's kind is blind to the attention's
    fields and the other way round; the norm placement, like any field of neither set, counts
    for both."""
    chunked_dense, chunked_moe, _, nope_moe = layer_plan(case_config("llama4-maverick"))
    assert sublayer_plans(chunked_dense)[0] == sublayer_plans(chunked_moe)[0]
    assert sublayer_plans(chunked_dense)[1] != sublayer_plans(chunked_moe)[1]
    assert sublayer_plans(chunked_moe)[0] != sublayer_plans(nope_moe)[0]
    assert sublayer_plans(chunked_moe)[1] == sublayer_plans(nope_moe)[1]
    placed = dataclasses.replace(chunked_dense, norms="sandwich")
    assert all(a != b for a, b in zip(sublayer_plans(placed), sublayer_plans(chunked_dense)))


def test_a_parallel_block_is_copied_whole():
    """GPT-J's attention and MLP read the same input: no mid-layer residual to split at, so a
    layer whose attention and MLP kinds come from two traced layers is a kind of its own."""
    config = dataclasses.replace(case_config("llama4-maverick"), parallel_residual=True)
    assert layer_sources(Transformer(config)) == [(0, 0), (1, 1), (0, 0), (3, 3)]


def test_a_model_of_distinct_layers_is_traced_in_full():
    config = dataclasses.replace(case_config("llama4-maverick"), n_layers=2,  # chunked dense, chunked MoE
                                 attn_pattern=("chunked", "chunked"))
    assert traced_spec(decoder_spec(config)) is None


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_the_stamped_graph_is_the_fully_traced_one(arch):
    config = config_of(arch)
    traced = traced_spec(decoder_spec(config))
    stamped = exporter._exported(traced, optimize=False)
    stamp_traced(traced, stamped)  # a StampError fails the test (export_graph would trace in full)
    stamped.optimize()
    full = full_graph(decoder_spec(config))
    for program in (stamped, full):  # as every export finishes its graphs: the axes named
        exporter.finish_programs(config, {DECODER: program})
    graphs = stamped.model.graph, full.model.graph
    assert signature(graphs[0].inputs) == signature(graphs[1].inputs)
    assert signature(graphs[0].outputs) == signature(graphs[1].outputs)
    assert Counter(n.op_type for n in graphs[0]) == Counter(n.op_type for n in graphs[1])
    weights = [{name: v.const_value.numpy() for name, v in g.initializers.items()} for g in graphs]
    params = [{name: w for name, w in ws.items() if name.startswith("model.")} for ws in weights]
    assert sorted(params[0]) == sorted(params[1])
    for name in params[1]:
        np.testing.assert_array_equal(params[0][name], params[1][name], err_msg=name)
    assert folded(weights[0]) == folded(weights[1])  # the optimizer's folds, named after intermediate values
    sessions = session(stamped), session(full)
    inputs = feeds(config, sessions[1])
    for name, got, want in zip([o.name for o in sessions[1].get_outputs()], *(s.run(None, inputs) for s in sessions)):
        np.testing.assert_array_equal(got, want, err_msg=name)


def stamped_case_configs() -> list[str]:
    """The presets whose case config the export takes and whose layers repeat a kind."""
    names = []
    for name in PRESETS:
        config = case_config(name)
        try:
            check_exportable(config)
        except UnsupportedFeature:
            continue
        kinds = layer_kinds(Transformer(config))
        if len(set(kinds)) < len(kinds):
            names.append(name)
    return names


@pytest.mark.slow
@pytest.mark.parametrize("arch", stamped_case_configs())
def test_every_preset_with_repeated_layers_is_stamped(arch):
    """No preset's case config falls back to a full trace (export_graph would do so silently)."""
    traced = traced_spec(decoder_spec(case_config(arch)))
    stamp_traced(traced, exporter._exported(traced, optimize=False))


@pytest.fixture(scope="module")
def traced():
    """traced_program of a three-layer Gemma 3."""
    return traced_program("gemma3-4b")


def traced_program(arch: str):
    """(config, the traced spec, its unoptimized program) of CONFIGS' `arch`."""
    config = config_of(arch)
    spec = traced_spec(decoder_spec(config))
    return config, spec, exporter._exported(spec, optimize=False)


def copied(program):
    return ir.from_proto(ir.to_proto(program.model))


def intermediate(graph, layer: int):
    """A value inside `layer`: its attention's first MatMul's output."""
    return next(n for n in graph if n.op_type == "MatMul" and f"layers.{layer}.attn" in
                n.metadata_props.get("pkg.torch.onnx.name_scopes", "")).outputs[0]


def reading_output(graph, layer: int, name: str) -> None:
    """Append a node that adds the graph output `name` to a value inside `layer`."""
    graph.append(ir.node("Add", [intermediate(graph, layer), next(v for v in graph.outputs if v.name == name)]))


def refused(traced, tamper, match: str) -> None:
    """stamp refuses a copy of the traced graph after `tamper(graph)`."""
    config, spec, program = traced
    graph = copied(program).graph
    tamper(graph)
    with pytest.raises(StampError, match=match):
        stamp(graph, config, spec.module.sources, spec.module.decoders.full)


def test_a_node_of_two_layers_is_refused(traced):
    refused(traced, lambda g: g.append(ir.node("Add", [intermediate(g, 0), intermediate(g, 2)])),
            "belongs to layers 0 and 2")


def test_a_layer_reading_another_hidden_state_than_its_input_is_refused(traced):
    refused(traced, lambda g: reading_output(g, 2, HIDDEN.format(2)), "reads the hidden state")


def test_a_layer_value_as_another_graph_output_is_refused(traced):
    def tap(graph):
        node = ir.node("Identity", [intermediate(graph, 0)])
        graph.append(node)
        node.outputs[0].name = "tap"
        graph.outputs.append(node.outputs[0])

    refused(traced, tap, "layer 0's value is the graph output tap")


def test_a_layer_output_computed_elsewhere_is_refused(traced):
    def elsewhere(graph):
        node = ir.node("Identity", [next(v for v in graph.inputs if v.name == "past_key_values.2.key")])
        graph.append(node)  # layer 2's past as layer 0's present
        slot = next(i for i, v in enumerate(graph.outputs) if v.name == "present.0.key")
        graph.outputs[slot].name = "present.0.key.traced"
        node.outputs[0].name = "present.0.key"
        graph.outputs[slot] = node.outputs[0]

    refused(traced, elsewhere, "present.0.key is not computed by layer 0")


@pytest.fixture(scope="module")
def traced_sublayers():
    """(config, the traced spec, its unoptimized program) of Llama 4 Maverick's case config:
    layers 0 and 3 traced, each split at its mid-layer residual."""
    program = traced_program("llama4-maverick")
    assert program[1].module.split == [0, 3]
    return program


def test_a_feed_forward_reading_its_attention_is_refused(traced_sublayers):
    refused(traced_sublayers, lambda g: reading_output(g, 3, MID.format(3)),
            "of layer 3's feed-forward reads .* of its attention")


def test_an_unseparable_graph_is_exported_in_full(monkeypatch):
    config = config_of("llama3")
    traced_modules = []
    exported = exporter._exported

    def recorded(spec, optimize):
        traced_modules.append(type(spec.module).__name__)
        return exported(spec, optimize)

    def refuse(spec, program):
        raise StampError("not separable")

    monkeypatch.setattr(exporter, "_exported", recorded)
    monkeypatch.setattr("lmref.export.stamping.stamp_traced", refuse)
    with pytest.warns(UserWarning, match="every layer traced, none stamped: not separable"):
        program = export_graph(decoder_spec(config))
    assert traced_modules == ["TracedLayers", "OnnxDecoder"]
    names = [v.name for v in program.model.graph.outputs]
    assert names == ["logits", *(f"present.{i}.{kind}" for i in range(config.n_layers) for kind in KV)]
