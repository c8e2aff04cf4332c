"""The graph side of export/stamping.py: the traced layers' nodes marked, checked separable,
and copied for the layers that were not traced.

A traced layer's nodes are those that depend on its hidden input, its own parameters or its
own past, other than through a Shape (`layer_nodes`).  Where a layer's two sublayers come from
different traced layers, each of those is split at its mid-layer residual (MID, the hidden
state after the attention sublayer): its feed-forward half is the nodes that depend on that
residual or on the feed-forward's parameters (spec/params.py FEED_FORWARD_PARTS), its
attention half the rest.  A layer, or a half, is copied as a `Piece`: its nodes, the hidden
state it reads and the one it computes, its own inputs and initializers, its graph outputs.
"""

from __future__ import annotations

import dataclasses
import re

import onnx_ir as ir
from torch import nn

from lmref.export.decoder import KV, graph_input_names, graph_output_names, moe_output_names
from lmref.spec.params import in_feed_forward

EMBEDDED = "lmref.stamp.embedded"  # the traced graph's extra outputs: the first layer's input,
HIDDEN = "lmref.stamp.hidden.{}"  # each traced layer's output, by its index in the model,
MID = "lmref.stamp.mid.{}"  # and a split layer's hidden state after its attention sublayer
SHAPE_OPS = frozenset({"Shape", "Size"})  # their outputs depend on the input's dims only
LAYER_PREFIX = "model.layers.{}."  # a layer's parameters' module path in TracedLayers (and OnnxDecoder)


class StampError(Exception):
    """The traced graph's layers are not separable as stamping needs: trace every layer."""


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
class Piece:
    """What is copied in one go: a traced layer, or one of its sublayers."""

    layer: int  # the traced layer's index
    nodes: list[ir.Node]
    enters: ir.Value  # the hidden state its nodes read
    leaves: ir.Value  # the hidden state they compute
    own: list[ir.Value]  # the layer's past inputs and parameter initializers its nodes read
    outputs: list[str]  # the graph outputs they compute


@dataclasses.dataclass
class TracedLayer:
    """A traced layer of the graph: its marked nodes, its hidden input and output (and its mid
    residual, where it is split), and its own inputs (the past) and initializers (its parameters)."""

    index: int
    nodes: list[ir.Node]
    hidden_in: ir.Value
    hidden_out: ir.Value
    own: list[ir.Value]
    mid: ir.Value | None

    def outputs(self, config) -> list[str]:
        """The graph outputs that are this layer's: presents, router logits, chosen experts."""
        return self.presents() + [name for name in moe_output_names(config) if name.endswith(f".{self.index}")]

    def presents(self) -> list[str]:
        return [f"present.{self.index}.{kind}" for kind in KV]

    def whole(self, config) -> Piece:
        return Piece(self.index, self.nodes, self.hidden_in, self.hidden_out, self.own, self.outputs(config))

    def sublayers(self, config) -> tuple[Piece, Piece]:
        """(its attention half, its feed-forward half): the module docstring's split."""
        prefix = LAYER_PREFIX.format(self.index)
        feed_forward = [v for v in self.own if v.name.startswith(prefix) and in_feed_forward(v.name[len(prefix):])]
        dependent, later = {self.mid, *feed_forward}, []
        for node in self.nodes:
            if any(v in dependent for v in node.inputs if v is not None):
                later.append(node)
                dependent.update(node.outputs)
        taken = set(later)
        earlier = [node for node in self.nodes if node not in taken]
        attention = [v for v in self.own if v not in feed_forward]
        moe = self.outputs(config)[len(KV):]
        return (Piece(self.index, earlier, self.hidden_in, self.mid, attention, self.presents()),
                Piece(self.index, later, self.mid, self.hidden_out, feed_forward, moe))


def traced_and_split(sources: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(the traced layers, those of them whose sublayers are copied apart) of
    export/stamping.py's layer_sources."""
    traced = sorted({i for pair in sources for i in pair})
    return traced, sorted({i for pair in sources if pair[0] != pair[1] for i in pair})


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
        layers[index] = TracedLayer(index, nodes, hidden_in, hidden_out, own, outputs.get(MID.format(index)))
        hidden_in = hidden_out
    return layers


def check_separable(graph: ir.Graph, layers: dict[int, TracedLayer], config) -> None:
    """StampError unless every traced layer is separable: no node is two layers', a layer reads
    no hidden state but its input (the embedding's output and each layer's output) and its own
    mid residual, and its graph outputs are its own (its presents and router outputs), computed
    by its own nodes.  A layer's other values then reach nothing but its own nodes and Shapes:
    layer_nodes marks every other node that reads one as the layer's."""
    owner: dict[ir.Node, int] = {}
    for layer in layers.values():
        for node in layer.nodes:
            if node in owner:
                raise StampError(f"node {node.name} ({node.op_type}) belongs to layers {owner[node]} and {layer.index}")
            owner[node] = layer.index
    outputs = {v.name: v for v in graph.outputs}
    hidden = {outputs[EMBEDDED]} | {v for layer in layers.values() for v in (layer.hidden_out, layer.mid)} - {None}
    for layer in layers.values():
        mine = layer.outputs(config) + [HIDDEN.format(layer.index), MID.format(layer.index)]
        for node in layer.nodes:
            for value in node.inputs:
                if value in hidden and value is not layer.hidden_in and value is not layer.mid:
                    raise StampError(f"node {node.name} ({node.op_type}) of layer {layer.index} reads the hidden "
                                     f"state {value.name}, not its layer's input")
            for value in node.outputs:
                if value.is_graph_output() and value.name not in mine:
                    raise StampError(f"layer {layer.index}'s value is the graph output {value.name}")
        for name in layer.outputs(config):
            if owner.get(outputs[name].producer()) != layer.index:
                raise StampError(f"graph output {name} is not computed by layer {layer.index}")


def check_sublayers(graph: ir.Graph, layer: TracedLayer, config) -> tuple[Piece, Piece]:
    """The layer's sublayers (TracedLayer.sublayers); StampError unless they meet at the mid
    residual only: the attention half computes it and the presents, the feed-forward half the
    layer's output and router outputs, and reads no value of the attention half but the mid
    residual, and no past."""
    attention, feed_forward = layer.sublayers(config)
    outputs = {v.name: v for v in graph.outputs}
    earlier, later = set(attention.nodes), set(feed_forward.nodes)
    for piece, nodes in ((attention, earlier), (feed_forward, later)):
        for value in [piece.leaves] + [outputs[name] for name in piece.outputs]:
            if value.producer() not in nodes:
                raise StampError(f"{value.name} is not computed by its sublayer of layer {layer.index}")
    pasts = {v for v in attention.own if v.const_value is None}
    for node in feed_forward.nodes:
        for value in node.inputs:
            if value is not None and value is not layer.mid and (value in pasts or value.producer() in earlier):
                raise StampError(f"node {node.name} ({node.op_type}) of layer {layer.index}'s feed-forward reads "
                                 f"{value.name} of its attention")
    return attention, feed_forward


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


def stamped_piece(graph: ir.Graph, piece: Piece, index: int, enters: ir.Value, module: nn.Module,
                  produced: dict[str, ir.Value]) -> ir.Value:
    """Append layer `index`'s copy of `piece`, reading `enters`, to `graph`: its own inputs and
    parameters added as the copies read them, its graph outputs entered into `produced` under
    layer `index`'s names; the hidden state it computes."""
    values, own = {piece.enters: enters}, set(piece.own)
    for node in piece.nodes:
        for value in node.inputs:
            if value in own and value not in values:
                values[value] = own_copy(value, piece.layer, index, module)
                if values[value].const_value is None:
                    graph.inputs.append(values[value])
                else:
                    graph.register_initializer(values[value])
        graph.append(copied_node(node, values, piece.layer, index))
    outputs = {v.name: v for v in graph.outputs}
    for name in piece.outputs:
        produced[renamed(name, index)] = values[outputs[name]]
        produced[renamed(name, index)].name = renamed(name, index)
    return values[piece.leaves]


def read_instead(nodes, old: ir.Value, new: ir.Value) -> None:
    """`nodes` read `new` wherever they read `old`."""
    for node in nodes:
        for i, value in enumerate(node.inputs):
            if value is old:
                node.replace_input_with(i, new)


def stamp(graph: ir.Graph, config, sources: list[tuple[int, int]], module: nn.Module) -> None:
    """Turn the graph of TracedLayers(decoder, sources) into the full decoder's, in place
    (export/stamping.py's steps 1 to 4); StampError where the layers are not separable (the
    graph is then left as it was, or, for a layer's parameter missing from `module`, part-stamped)."""
    layers = traced_layers(graph, traced_and_split(sources)[0])
    check_separable(graph, layers, config)
    split = {i: check_sublayers(graph, layer, config) for i, layer in layers.items() if layer.mid is not None}
    marked = {node for layer in layers.values() for node in layer.nodes}
    outputs = {v.name: v for v in graph.outputs}
    last = layers[max(layers)].hidden_out
    final = [node for node, _ in last.uses() if node not in marked and node.op_type not in SHAPE_OPS]
    produced = {"logits": outputs["logits"]}
    hidden = outputs[EMBEDDED]
    for index, (attention, feed_forward) in enumerate(sources):
        if index in layers:
            layer = layers[index]
            read_instead(layer.nodes, layer.hidden_in, hidden)
            produced |= {name: outputs[name] for name in layer.outputs(config)}
            hidden = layer.hidden_out
        elif attention == feed_forward:
            hidden = stamped_piece(graph, layers[attention].whole(config), index, hidden, module, produced)
        else:
            mid = stamped_piece(graph, split[attention][0], index, hidden, module, produced)
            hidden = stamped_piece(graph, split[feed_forward][1], index, mid, module, produced)
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
