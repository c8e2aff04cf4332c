"""The decoder graph in the time of its distinct layers: trace one layer of each kind, stamp
the others from it.

torch.onnx's export costs about 1.4 s a layer on the 2-core CI machine (torch.export, then a
second full retrace for the decompositions: benchmarks/README.md "Conformance time per arch"),
and a model's layers are mostly copies of a few kinds: Gemma 3's six case layers are two
kinds (sliding, global), Llama 4 Scout's four are two.  Two layers compute the same function
of (hidden state, past, weights, the step's shared tensors) when their LayerPlans agree but
for the index and their parameters have the same names and shapes (`layer_kinds`): the index
reaches the math nowhere but the cache slot (impl_torch/attention.py `cache.append`).

So `traced_spec` gives export/exporter.py's `export_graph` a decoder to trace with each kind's
FIRST layer only (TracedLayers: the model's loop runs over those, every parameter keeps its
module path), plus the hidden state before the first layer and after each traced layer as
extra outputs; `stamp` then, in the unoptimized ONNX graph:

1. marks each traced layer's nodes (`layer_nodes`): those that depend on the layer's hidden
   input, its own parameters or its own past, other than through a Shape (a layer of one
   kind has the same symbolic shapes as another, torch.export having made the pasts' dims
   one Dim each: export/decoder.py `dynamic_shapes`).  The rest (masks, RoPE tables,
   positions, constants, shapes) is shared, however lazily the model built it, as in a full
   trace;
2. refuses (StampError) layers that are not separable (`check_separable`): a node in two
   layers, a layer reading a hidden state other than its input, a layer's value as another
   graph output, a present or router output not computed by its layer;
3. for every untraced layer, in order, copies its kind's marked nodes, reading the hidden
   state of the layer before, its own past (a new graph input) and its own parameters (new
   initializers under its own module path, from the full model); its copies of the presents
   (and a MoE layer's router logits and experts) become its graph outputs;
4. feeds each traced layer, and the final norm, the hidden state of the layer before it in
   the full model, and puts inputs and outputs in export/decoder.py's order.

Where `stamp` refuses, `export_graph` traces every layer.  The result is the graph a full
trace gives but for the names of its intermediate values and the order of its nodes, which
onnxscript's optimizer then treats as it would the traced one (tests/test_export_stamping.py:
the same inputs, outputs, parameters, folded constants and op counts, and bit for bit the
same onnxruntime outputs as a full trace's graph, for sliding, global, chunked, NoPE, MoE
and inputs_embeds decoders).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator

import onnx_ir as ir
import torch
from torch import nn

from lmref.export.decoder import (KV, OnnxDecoder, dynamic_shapes, example_inputs, graph_input_names,
                                  graph_output_names, moe_output_names)
from lmref.export.vision_graphs import GraphSpec
from lmref.impl_torch import Transformer
from lmref.spec.plan import layer_plan

EMBEDDED = "lmref.stamp.embedded"  # the traced graph's extra outputs: the first layer's input,
HIDDEN = "lmref.stamp.hidden.{}"  # and each traced layer's output, by its index in the model
SHAPE_OPS = frozenset({"Shape", "Size"})  # their outputs depend on the input's dims only
LAYER_PREFIX = "model.layers.{}."  # a layer's parameters' module path in TracedLayers (and OnnxDecoder)


class StampError(Exception):
    """The traced graph's layers are not separable as stamping needs: trace every layer."""


def layer_kinds(model: Transformer) -> list[int]:
    """Per layer, the index of the first layer of its kind: the same LayerPlan but for the
    index, and the same parameter names and shapes."""
    firsts: dict[tuple, int] = {}
    kinds = []
    for plan, layer in zip(layer_plan(model.config), model.layers):
        shapes = tuple((name, tuple(p.shape)) for name, p in layer.named_parameters())
        kinds.append(firsts.setdefault((dataclasses.replace(plan, index=0), shapes), plan.index))
    return kinds


class Recorded:
    """A layer called as the model's loop calls it, recording its output hidden state."""

    def __init__(self, layer: nn.Module, hidden: list[torch.Tensor]):
        self.layer, self.hidden = layer, hidden

    def __getattr__(self, name: str):  # the layer's own attributes (`mlp`: decoder.recorded_choices)
        return getattr(self.layer, name)

    def __call__(self, h: torch.Tensor, *args, **kwargs):
        if not self.hidden:
            self.hidden.append(h)  # the first layer's input: the embedding's output
        out = self.layer(h, *args, **kwargs)
        self.hidden.append(out[0])
        return out


class ChosenLayers(nn.Module):
    """The model's `chosen` layers, each registered under its own index (so their parameters
    keep their module paths); iteration yields them in order, each Recorded into `hidden`."""

    def __init__(self, layers: nn.ModuleList, chosen: list[int]):
        super().__init__()
        for i in chosen:
            self.add_module(str(i), layers[i])
        self.hidden: list[torch.Tensor] = []

    def __iter__(self) -> Iterator:
        return iter([Recorded(layer, self.hidden) for layer in self._modules.values()])


def with_layers(model: Transformer, chosen: list[int]) -> Transformer:
    """A shallow copy of `model` (the same embedding, layers, norm and head modules) whose
    `layers` are the `chosen` ones only (ChosenLayers): its forward runs those."""
    subset = copy.copy(model)
    subset._modules = dict(model._modules)  # its own registry: `model` keeps all its layers
    subset.layers = ChosenLayers(model.layers, chosen)
    return subset


@dataclasses.dataclass(frozen=True)
class Decoders:
    """The full decoder (whose parameters the stamped layers take) and the one over the traced layers."""

    full: OnnxDecoder
    traced: OnnxDecoder


class TracedLayers(nn.Module):
    """The decoder with the first layer of each kind only (`kinds`: layer_kinds): inputs and
    outputs as export/decoder.py's for those layers, then EMBEDDED and HIDDEN of each.  Its
    one child is the decoder's model with those layers under the same name, so that torch.export
    lifts their parameters only, each under the module path a full trace gives it."""

    def __init__(self, decoder: OnnxDecoder, kinds: list[int]):
        super().__init__()
        self.kinds, self.chosen = kinds, sorted(set(kinds))
        self.model = with_layers(decoder.model, self.chosen)
        self.decoders = Decoders(decoder, type(decoder)(self.model))  # not registered: no second path
        self.eval()

    def forward(self, first: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        n = self.model.config.n_layers
        past: list = [None] * (2 * n)  # the untraced layers' pasts are never read
        for slot, layer in enumerate(self.chosen):
            past[2 * layer], past[2 * layer + 1] = past_key_values[2 * slot], past_key_values[2 * slot + 1]
        logits, *rest = self.decoders.traced(first, attention_mask, position_ids, past)
        hidden = list(self.model.layers.hidden)
        self.model.layers.hidden.clear()  # no tensor is kept on the module after the call
        presents = [rest[i] for layer in self.chosen for i in (2 * layer, 2 * layer + 1)]
        return (logits, *presents, *rest[2 * n:], *hidden)


def traced_names(config, chosen: list[int]) -> tuple[list[str], list[str]]:
    """(input names, output names) of TracedLayers: the full graph's, restricted to `chosen`."""
    keep = {str(i) for i in chosen}
    inputs = [name for name in graph_input_names(config) if not name.startswith("past_key_values.")
              or name.split(".")[1] in keep]
    outputs = [name for name in graph_output_names(config) if name == "logits" or name.split(".")[1] in keep]
    return inputs, outputs + [EMBEDDED] + [HIDDEN.format(i) for i in chosen]


def traced_example(config, chosen: list[int]) -> tuple[tuple, tuple]:
    """(example inputs, dynamic shapes) of TracedLayers: the full graph's for the chosen layers'
    pasts; the shapes by position, since TracedLayers names its first input `first`."""
    first, mask, positions, past = example_inputs(config)
    shapes = dynamic_shapes(config)
    slots = [2 * layer + k for layer in chosen for k in range(len(KV))]
    shapes["past_key_values"] = [shapes["past_key_values"][s] for s in slots]
    return (first, mask, positions, [past[s] for s in slots]), tuple(shapes.values())


def layer_nodes(graph: ir.Graph, sources: set, hidden_out: ir.Value) -> list[ir.Node]:
    """The nodes of `graph`, in its order, that depend on `sources` other than through a
    Shape; the dependence is not passed on past the layer's output `hidden_out`."""
    dependent, nodes = set(sources), []
    for node in graph:
        if node.op_type in SHAPE_OPS or not any(v in dependent for v in node.inputs if v is not None):
            continue
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            raise StampError(f"node {node.name} ({node.op_type}) of a layer holds a subgraph")
        nodes.append(node)
        dependent.update(v for v in node.outputs if v is not hidden_out)
    return nodes


@dataclasses.dataclass
class TracedLayer:
    """A traced layer of the graph: its marked nodes, its hidden input and output, and its own
    inputs (the past) and initializers (its parameters)."""

    index: int
    nodes: list[ir.Node]
    hidden_in: ir.Value
    hidden_out: ir.Value
    own: list[ir.Value]  # its past inputs and parameter initializers

    def outputs(self, config) -> list[str]:
        """The graph outputs that are this layer's: presents, router logits, chosen experts."""
        mine = [f"present.{self.index}.{kind}" for kind in KV]
        return mine + [name for name in moe_output_names(config) if name.endswith(f".{self.index}")]


def traced_layers(graph: ir.Graph, chosen: list[int]) -> dict[int, TracedLayer]:
    """{index: TracedLayer} of the graph TracedLayers exported (check_separable checks them)."""
    outputs = {v.name: v for v in graph.outputs}
    inputs = {v.name: v for v in graph.inputs}
    hidden_in = outputs[EMBEDDED]
    layers = {}
    for index in chosen:
        hidden_out = outputs[HIDDEN.format(index)]
        own = [inputs[f"past_key_values.{index}.{kind}"] for kind in KV]
        own += [v for name, v in graph.initializers.items() if name.startswith(LAYER_PREFIX.format(index))]
        nodes = layer_nodes(graph, {hidden_in, *own}, hidden_out)
        layers[index] = TracedLayer(index, nodes, hidden_in, hidden_out, own)
        hidden_in = hidden_out
    return layers


def check_separable(graph: ir.Graph, layers: dict[int, TracedLayer], config) -> None:
    """StampError unless every traced layer is separable: no node is two layers', a layer reads
    no hidden state but its input (the embedding's output and each layer's output), and its
    graph outputs are its own (its presents and router outputs), computed by its own nodes.
    A layer's other values then reach nothing but its own nodes and Shapes: layer_nodes marks
    every other node that reads one as the layer's."""
    owner: dict[ir.Node, int] = {}
    for layer in layers.values():
        for node in layer.nodes:
            if node in owner:
                raise StampError(f"node {node.name} ({node.op_type}) belongs to layers {owner[node]} and {layer.index}")
            owner[node] = layer.index
    outputs = {v.name: v for v in graph.outputs}
    hidden = {outputs[EMBEDDED]} | {layer.hidden_out for layer in layers.values()}
    for layer in layers.values():
        for node in layer.nodes:
            for value in node.inputs:
                if value in hidden and value is not layer.hidden_in:
                    raise StampError(f"node {node.name} ({node.op_type}) of layer {layer.index} reads the hidden "
                                     f"state {value.name}, not its layer's input")
            for value in node.outputs:
                if value.is_graph_output() and value.name not in layer.outputs(config) + [HIDDEN.format(layer.index)]:
                    raise StampError(f"layer {layer.index}'s value is the graph output {value.name}")
        for name in layer.outputs(config):
            if owner.get(outputs[name].producer()) != layer.index:
                raise StampError(f"graph output {name} is not computed by layer {layer.index}")


def renamed(name: str, index: int) -> str:
    """A layer's input or output name for layer `index`: past_key_values.{i}.key,
    present.{i}.value, router_logits.{i}, selected_experts.{i}."""
    parts = name.split(".")  # the layer's index is the second part of each
    parts[1] = str(index)
    return ".".join(parts)


def copied_node(node: ir.Node, values: dict, layer: int, index: int) -> ir.Node:
    """A copy of traced `layer`'s `node` for layer `index`, reading `values`' replacements;
    its outputs are entered into `values`."""
    scope = re.compile(rf"layers\.{layer}\b")
    copy = ir.Node(node.domain, node.op_type, [values.get(v, v) for v in node.inputs],
                   list(node.attributes.values()), overload=node.overload, num_outputs=len(node.outputs),
                   version=node.version, name=f"{node.name}.layer{index}",
                   metadata_props={k: scope.sub(f"layers.{index}", v) for k, v in node.metadata_props.items()})
    for old, new in zip(node.outputs, copy.outputs):
        new.name, new.type = f"{old.name}.layer{index}", old.type
        new.shape = None if old.shape is None else old.shape.copy()
        values[old] = new
    return copy


def own_copy(value: ir.Value, layer: int, index: int, module: nn.Module) -> ir.Value:
    """Layer `index`'s counterpart of traced `layer`'s past input or parameter initializer."""
    prefix = LAYER_PREFIX.format(layer)
    if not value.name.startswith(prefix):  # a past input
        return ir.Value(name=renamed(value.name, index), type=value.type, shape=value.shape.copy())
    name = LAYER_PREFIX.format(index) + value.name[len(prefix):]
    try:
        array = module.get_parameter(name).detach().numpy().copy()
    except AttributeError as error:
        raise StampError(f"initializer {value.name} of layer {layer} is not a parameter: {error}") from None
    if tuple(array.shape) != tuple(value.shape) or value.const_value is None \
            or array.dtype != value.const_value.dtype.numpy():
        raise StampError(f"parameter {name} is not shaped and typed as {value.name}")
    return ir.Value(name=name, type=value.type, shape=value.shape.copy(), const_value=ir.tensor(array, name=name))


def stamped_layer(graph: ir.Graph, layer: TracedLayer, index: int, hidden_in: ir.Value, module: nn.Module,
                  config) -> tuple[ir.Value, dict[str, ir.Value]]:
    """Append layer `index`, a copy of `layer` reading `hidden_in`, to `graph`: (its hidden
    output, {graph output name: value} of its presents and router outputs)."""
    values = {layer.hidden_in: hidden_in}
    for value in layer.own:
        values[value] = own_copy(value, layer.index, index, module)
        if values[value].const_value is None:
            graph.inputs.append(values[value])
        else:
            graph.register_initializer(values[value])
    for node in layer.nodes:
        graph.append(copied_node(node, values, layer.index, index))
    outputs = {v.name: v for v in graph.outputs}
    produced = {}
    for name in layer.outputs(config):
        produced[renamed(name, index)] = values[outputs[name]]
        produced[renamed(name, index)].name = renamed(name, index)
    return values[layer.hidden_out], produced


def read_instead(nodes, old: ir.Value, new: ir.Value) -> None:
    """`nodes` read `new` wherever they read `old`."""
    for node in nodes:
        for i, value in enumerate(node.inputs):
            if value is old:
                node.replace_input_with(i, new)


def stamp(graph: ir.Graph, config, kinds: list[int], module: nn.Module) -> None:
    """Turn the graph of TracedLayers(decoder, kinds) into the full decoder's, in place (the
    module docstring's steps 1 to 4); StampError where the layers are not separable (the graph
    is then left as it was, or, for a layer's parameter missing from `module`, part-stamped)."""
    layers = traced_layers(graph, sorted(set(kinds)))
    check_separable(graph, layers, config)
    marked = {node for layer in layers.values() for node in layer.nodes}
    outputs = {v.name: v for v in graph.outputs}
    last = layers[max(layers)].hidden_out
    final = [node for node, _ in last.uses() if node not in marked and node.op_type not in SHAPE_OPS]
    produced = {"logits": outputs["logits"]}
    hidden = outputs[EMBEDDED]
    for index, kind in enumerate(kinds):
        layer = layers[kind]
        if index == kind:
            read_instead(layer.nodes, layer.hidden_in, hidden)
            produced |= {name: outputs[name] for name in layer.outputs(config)}
            hidden = layer.hidden_out
        else:
            hidden, stamped = stamped_layer(graph, layer, index, hidden, module, config)
            produced |= stamped
    read_instead(final, last, hidden)
    if outputs[EMBEDDED].is_graph_input():  # inputs_embeds, which the embedding passes on as it is
        outputs[EMBEDDED].name = graph_input_names(config)[0]  # (the exporter named it by the output)
    by_name = {v.name: v for v in graph.inputs}
    order = [by_name[name] for name in graph_input_names(config)]
    graph.inputs.clear()
    graph.inputs.extend(order)
    graph.outputs.clear()
    graph.outputs.extend(produced[name] for name in graph_output_names(config))
    graph.sort()


def traced_spec(spec: GraphSpec) -> GraphSpec | None:
    """The GraphSpec to trace in place of the decoder's `spec` (TracedLayers), None where every
    layer is a kind of its own or `spec` is not a decoder's."""
    if not isinstance(spec.module, OnnxDecoder):
        return None
    config = spec.module.model.config
    kinds = layer_kinds(spec.module.model)
    if len(set(kinds)) == len(kinds):
        return None
    chosen = sorted(set(kinds))
    example, shapes = traced_example(config, chosen)
    return GraphSpec(TracedLayers(spec.module, kinds), example, shapes, *traced_names(config, chosen))


def stamp_traced(spec: GraphSpec, program) -> None:
    """Stamp the ONNXProgram traced from traced_spec's `spec` into the full decoder's graph."""
    module = spec.module
    stamp(program.model.graph, module.model.config, module.kinds, module.decoders.full)
