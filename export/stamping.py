"""The decoder graph in the time of its distinct layers: trace one layer of each kind, stamp
the others from it.

torch.onnx's export costs about 1.4 s a layer on the 2-core CI machine (torch.export, then a
second full retrace for the decompositions: benchmarks/README.md "Conformance time per arch"),
and a model's layers are mostly copies of a few kinds: Gemma 3's six case layers are two
kinds (sliding, global), Llama 4 Scout's four are two.  Two layers compute the same function
of (hidden state, past, weights, the step's shared tensors) when their LayerPlans agree but
for the index, their parameters have the same names and shapes, and their modules' other
attributes are equal (`layer_kinds`, `module_state`): the index reaches the math nowhere but
the cache slot (impl_torch/attention.py `cache.append`).  The same holds of each sublayer
(`sublayer_kinds`: the plan's fields, the parameters and the modules that spec/plan.py
`sublayer_plans` and spec/params.py FEED_FORWARD_PARTS give it), so a layer
whose attention is one traced layer's and whose feed-forward is another's is stamped from
the two: Llama 4 Maverick's four case layers are three kinds (chunked dense, chunked MoE,
NoPE MoE) and two traced layers (`layer_sources`).

So `traced_spec` gives export/exporter.py's `export_graph` a decoder to trace with those
layers only (TracedLayers: the model's loop runs over them, every parameter keeps its module
path), plus the hidden state before the first layer, after each traced layer and, in a layer
whose sublayers are copied apart, after its attention as extra outputs; `stamp`
(export/stamp_graph.py) then, in the unoptimized ONNX graph:

1. marks each traced layer's nodes (`layer_nodes`): those that depend on the layer's hidden
   input, its own parameters or its own past, other than through a Shape (a layer of one
   kind has the same symbolic shapes as another, torch.export having made the pasts' dims
   one Dim each: export/decoder.py `dynamic_shapes`).  The rest (masks, RoPE tables,
   positions, constants, shapes) is shared, however lazily the model built it, as in a full
   trace.  A split layer's feed-forward half is its nodes that depend on the mid-layer
   residual or the feed-forward's parameters, its attention half the others;
2. refuses (StampError) layers that are not separable (`check_separable`): a node in two
   layers, a layer reading a hidden state other than its input (or its own mid residual), a
   layer's value as another graph output, a present or router output not computed by its
   layer; and halves that do not meet at the mid residual only (`check_sublayers`);
3. for every untraced layer, in order, copies the marked nodes of its kind's traced layer,
   or of the two halves, reading the hidden state of the layer before, its own past (a new
   graph input) and its own parameters (new initializers under its own module path, from the
   full model); its copies of the presents (and a MoE layer's router logits and experts)
   become its graph outputs;
4. feeds each traced layer, and the final norm, the hidden state of the layer before it in
   the full model, and puts inputs and outputs in export/decoder.py's order.

Where `stamp` refuses, `export_graph` traces every layer.  The result is the graph a full
trace gives but for the names of its intermediate values and the order of its nodes, which
onnxscript's optimizer then treats as it would the traced one (tests/test_export_stamping.py:
the same inputs, outputs, parameters, folded constants and op counts, and bit for bit the
same onnxruntime outputs as a full trace's graph, for sliding, global, chunked, NoPE, MoE,
sublayer-stamped and inputs_embeds decoders).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from lmref.export.decoder import KV, OnnxDecoder, dynamic_shapes, example_inputs, graph_input_names, graph_output_names
from lmref.export.stamp_graph import EMBEDDED, HIDDEN, MID, stamp, traced_and_split
from lmref.export.vision_graphs import GraphSpec
from lmref.impl_torch import Transformer
from lmref.spec.params import in_feed_forward
from lmref.spec.plan import LayerPlan, layer_plan, sublayer_plans


def module_state(layer: nn.Module) -> tuple:
    """(submodule path, attribute, value) of every plain attribute of the layer's modules but
    the layer's index and its LayerPlan (whose fields the kinds compare apart): what, beside the
    plan and the parameters, its math could read.  A value set on one layer only (a per-layer
    constant) makes that layer a kind of its own rather than a copy of another."""
    state = []
    for path, module in layer.named_modules():
        for name, value in vars(module).items():
            skipped = name.startswith("_") or name == "training" or (module is layer and name == "index")
            if not (skipped or isinstance(value, LayerPlan)):
                state.append((path, name, value))
    return tuple(state)


def layer_kinds(model: Transformer) -> list[int]:
    """Per layer, the index of the first layer of its kind: the same kinds of attention and
    feed-forward (sublayer_kinds), so the same LayerPlan but for the index, the same parameter
    names and shapes, and the same module_state."""
    return first_of_kind(sublayer_kinds(model))


def first_of_kind(kinds: list) -> list[int]:
    """Per item of `kinds`, the index of the first item equal to it."""
    firsts: dict = {}
    return [firsts.setdefault(kind, index) for index, kind in enumerate(kinds)]


def sublayer_kinds(model: Transformer) -> list[tuple[tuple, tuple]]:
    """Per layer, (its attention's kind, its feed-forward's kind): the sublayer's plan fields
    (spec/plan.py `sublayer_plans`), its parameters' names and shapes and its modules'
    module_state (by spec/params.py FEED_FORWARD_PARTS).  A parallel block's two sublayers
    read the same input, so there each kind is the whole layer's."""
    kinds = []
    for plan, layer in zip(layer_plan(model.config), model.layers):
        shapes = [(name, tuple(p.shape)) for name, p in layer.named_parameters()]
        feed_forward = tuple(s for s in shapes if in_feed_forward(s[0]))
        attention = tuple(s for s in shapes if s not in feed_forward)
        state = module_state(layer)  # the block's own attributes (path "") count for both sublayers
        earlier = tuple(s for s in state if not in_feed_forward(s[0]))
        later = tuple(s for s in state if s[0] == "" or in_feed_forward(s[0]))
        plans = sublayer_plans(plan)
        kinds.append(((plans, tuple(shapes), state),) * 2 if model.config.parallel_residual
                     else ((plans[0], attention, earlier), (plans[1], feed_forward, later)))
    return kinds


def layer_sources(model: Transformer) -> list[tuple[int, int]]:
    """Per layer, (the traced layer whose attention it copies, the traced layer whose
    feed-forward it copies); a traced layer is its own source for both.  The traced layers are
    first layers of their kind (layer_kinds), picked until every sublayer kind has one (the
    one that adds the most kinds first, then the earliest): Llama 4 Maverick's chunked dense,
    chunked MoE and NoPE MoE layers need the first and the last only.  A layer of a traced
    layer's kind copies that layer whole; another copies each sublayer from the first traced
    layer of its kind."""
    kinds = sublayer_kinds(model)
    wholes = first_of_kind(kinds)
    missing = {(part, kind) for pair in kinds for part, kind in enumerate(pair)}
    traced: list[int] = []
    while missing:
        gain = {i: len(missing & set(enumerate(kinds[i]))) for i in sorted(set(wholes))}
        best = max(gain, key=lambda i: (gain[i], -i))
        traced.append(best)
        missing -= set(enumerate(kinds[best]))
    sources = []
    for index, whole in enumerate(wholes):
        if whole in traced:
            sources.append((whole, whole))
        else:
            sources.append(tuple(min(i for i in traced if kinds[i][part] == kinds[index][part]) for part in (0, 1)))
    return sources


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
    """The decoder with the traced layers only (`sources`: layer_sources): inputs and outputs
    as export/decoder.py's for those layers, then EMBEDDED and HIDDEN of each, and MID of each
    split one (the input of its `mlp_norm`, the identity where the plan puts no norm there: the
    hidden state after the attention).  Its one child is the decoder's model with those layers
    under the same name, so that torch.export lifts their parameters only, each under the
    module path a full trace gives it."""

    def __init__(self, decoder: OnnxDecoder, sources: list[tuple[int, int]]):
        super().__init__()
        self.sources = sources
        self.chosen, self.split = traced_and_split(sources)
        self.model = with_layers(decoder.model, self.chosen)
        self.decoders = Decoders(decoder, type(decoder)(self.model))  # not registered: no second path
        self.eval()

    def forward(self, first: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past_key_values: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        n = self.model.config.n_layers
        past: list = [None] * (2 * n)  # the untraced layers' pasts are never read
        for slot, layer in enumerate(self.chosen):
            past[2 * layer], past[2 * layer + 1] = past_key_values[2 * slot], past_key_values[2 * slot + 1]
        mids: list[torch.Tensor] = []
        hooks = [self.model.layers.get_submodule(f"{i}.mlp_norm").register_forward_pre_hook(
            lambda module, args: mids.append(args[0])) for i in self.split]
        try:
            logits, *rest = self.decoders.traced(first, attention_mask, position_ids, past)
        finally:
            for hook in hooks:  # the layers are the full model's too
                hook.remove()
        hidden = list(self.model.layers.hidden)
        self.model.layers.hidden.clear()  # no tensor is kept on the module after the call
        presents = [rest[i] for layer in self.chosen for i in (2 * layer, 2 * layer + 1)]
        return (logits, *presents, *rest[2 * n:], *hidden, *mids)


def traced_names(config, chosen: list[int], split: list[int]) -> tuple[list[str], list[str]]:
    """(input names, output names) of TracedLayers: the full graph's, restricted to `chosen`,
    then its own."""
    keep = {str(i) for i in chosen}
    inputs = [name for name in graph_input_names(config) if not name.startswith("past_key_values.")
              or name.split(".")[1] in keep]
    outputs = [name for name in graph_output_names(config) if name == "logits" or name.split(".")[1] in keep]
    return inputs, outputs + [EMBEDDED] + [HIDDEN.format(i) for i in chosen] + [MID.format(i) for i in split]


def traced_example(config, chosen: list[int]) -> tuple[tuple, tuple]:
    """(example inputs, dynamic shapes) of TracedLayers: the full graph's for the chosen layers'
    pasts; the shapes by position, since TracedLayers names its first input `first`."""
    first, mask, positions, past = example_inputs(config)
    shapes = dynamic_shapes(config)
    slots = [2 * layer + k for layer in chosen for k in range(len(KV))]
    shapes["past_key_values"] = [shapes["past_key_values"][s] for s in slots]
    return (first, mask, positions, [past[s] for s in slots]), tuple(shapes.values())


def traced_spec(spec: GraphSpec) -> GraphSpec | None:
    """The GraphSpec to trace in place of the decoder's `spec` (TracedLayers), None where every
    layer is traced (layer_sources) or `spec` is not a decoder's."""
    if not isinstance(spec.module, OnnxDecoder):
        return None
    config = spec.module.model.config
    sources = layer_sources(spec.module.model)
    chosen, split = traced_and_split(sources)
    if len(chosen) == config.n_layers:
        return None
    example, shapes = traced_example(config, chosen)
    return GraphSpec(TracedLayers(spec.module, sources), example, shapes, *traced_names(config, chosen, split))


def stamp_traced(spec: GraphSpec, program) -> None:
    """Stamp the ONNXProgram traced from traced_spec's `spec` into the full decoder's graph."""
    module = spec.module
    stamp(program.model.graph, module.model.config, module.sources, module.decoders.full)
