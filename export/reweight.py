"""The graphs of a config for other weights without tracing it again: `--impl onnx` traces
once per config and re-weights for each golden case (export/onnx_adapter.py).

How the exporter turns canonical params into initializers (export/exporter.py `trace`):

1. impl_torch's `from_canonical` copies each canonical param into a module parameter
   (impl_torch/model.py `torch_name`: a projection transposed to nn.Linear's [d_out, d_in]).
2. torch.onnx's dynamo export makes every parameter the graph reads an initializer named by
   its module path (`model.layers.0.attn.wq.weight`: the wrappers hold the twin as `model`;
   a tied head's one tensor once, under one of its paths), and the buffers and literal
   constants initializers of their own.  A parameter the graph does not read is left out
   (LLaVA's embed graph holds the token table alone).
3. Its optimizer (`optimize=True`: onnxscript `optimize_ir`) folds every expression of
   constants.  Each nn.Linear's `Transpose(weight)` becomes an initializer `val_N` holding
   the canonical [d_in, d_out] matrix (its metadata `pkg.onnxscript.optimizer.folded_from`
   names the parameter) and the parameter itself goes where nothing else reads it.  On
   tiny("llama3"), torch 2.13 / onnxscript 0.7.2: 6 initializers keep a parameter's name
   (the embedding, the norms), 15 are folded transposes, 18 are constants of the config.

So a Template keeps each graph as traced before step 3 (`optimize=False`), and for new
weights writes each parameter's initializer, in a copy, as step 1 would fill the parameter,
then runs the exporter's own optimizer on it: every folded copy (a transpose, or any product
the folding computes) is derived as a direct export derives it, never matched by value.
Where export/refold.py accounts for every initializer of the optimized graph (a parameter's
own, or a fold of parameters and constants by Transpose and elementwise arithmetic, checked by
recomputing the first weights' folds bit for bit), the Template keeps that graph too and
writes new weights into a copy of it with their folds recomputed, without the optimizer: its
`refolds`.
The copy must be one the optimizer treats as the original: it names the values it makes by
the graph's name authority (onnx_ir: `val_{counter}`, skipping every name the graph ever
held), and a serialized or cloned graph starts a fresh one that has forgotten the names the
trace used and removed (LLaVA's vision graph then gets `val_21` where a direct export has
`val_136`).  So the copy is onnx_ir's `Model.clone` (new nodes and values, tensors shared)
given a copy of the original's name authority (`graph_copy`).  torch's export optimizes,
then names the inputs and outputs; here the names come first, which leaves the graph byte
for byte the same (tests/test_export_weights_swap.py compares each initializer, the
serialized graph and the onnxruntime outputs with a direct export's).

`template` refuses (ReweightError, and the caller exports in full) a graph whose parameters
it cannot account for: a module parameter that no canonical param fills, a parameter the
traced graph reads that is not an initializer under its module path, an initializer of a
parameter whose shape or dtype is not the canonical param's as step 1 lays it out, or a
lifted tensor constant of more than one element (a tensor that is not a parameter could hold
a copy of a weight; a 0-d one is a scalar forward makes from the config, as Gemma's
embedding scale `h.new_tensor(scale)` in impl_torch/embedding.py) unless torch.export names
it by the path of a tensor the model's ConfigTensors hold (impl_torch/constants.py: ALiBi's
slopes and LongRoPE's factors, built from the config alone), or an onnx_ir without
the name authority `graph_copy` needs.  `Template.programs` refuses params whose names or
shapes differ.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np

from lmref.export.exporter import export_graph, finish_programs, graph_specs
from lmref.export.refold import refold
from lmref.spec.config import ModelConfig

WEIGHT_DTYPE = np.float32  # export/decoder.py DTYPE: the twin holds float32 parameters


class ReweightError(Exception):
    """The graphs cannot be re-weighted with certainty: export them in full."""


@dataclass(frozen=True)
class Slot:
    """An initializer of the unoptimized graph that holds a module parameter: the canonical
    param that fills it, transposed or not (torch_name), and its shape."""

    canonical: str
    transposed: bool
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Template:
    """A config's graphs before optimization ({role: onnx_ir Model}, never changed) and, per
    role, {initializer name: Slot} of every parameter they read."""

    config: ModelConfig
    graphs: dict
    slots: dict[str, dict[str, Slot]]
    refolds: dict = field(default_factory=dict)  # {role: Refold}, where export/refold.py gives one

    def programs(self, params: dict[str, np.ndarray]) -> dict:
        """{role: ONNXProgram} of (config, params), as export/exporter.py `trace` makes them:
        by export/refold.py where the role has a Refold, else through the optimizer."""
        from torch.onnx import ONNXProgram

        programs = {}
        for role, graph in self.graphs.items():
            if role in self.refolds:
                programs[role] = ONNXProgram(self.refolded(role, params), None)
                continue
            model = graph_copy(graph)
            for name, slot in self.slots[role].items():
                set_value(model, name, laid_out(params, slot, name))
            program = ONNXProgram(model, None)
            program.optimize()
            programs[role] = program
        return finish_programs(self.config, programs)

    def refolded(self, role: str, params: dict[str, np.ndarray]):
        """A copy of the role's optimized graph holding `params` (export/refold.py)."""
        model = graph_copy(self.refolds[role].optimized)
        for name, value in self.weights(role, params).items():
            set_value(model, name, value)
        return model

    def weights(self, role: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{initializer of the role's optimized graph: its float32 value for `params`}, for each
        one that holds weights (export/refold.py `Refold.values`; the role must have a Refold)."""
        return self.refolds[role].values(self.slots[role], params, laid_out)


def set_value(model, name: str, value: np.ndarray) -> None:
    """Initializer `name` of `model` holds `value` (a tensor of that name, as the exporter's)."""
    import onnx_ir as ir

    model.graph.initializers[name].const_value = ir.tensor(value, name=name)


def graph_copy(model):
    """A copy of an onnx_ir Model that the optimizer names values in as in the original (module
    docstring): its clone, with a copy of the original graph's name authority (a private
    attribute of onnx_ir's Graph; ReweightError where this onnx_ir has none)."""
    if not hasattr(model.graph, "_name_authority"):
        raise ReweightError("this onnx_ir's Graph keeps no name authority to copy: the optimizer could name the "
                            "values of a copy otherwise")
    clone = model.clone()
    clone.graph._name_authority = copy.deepcopy(model.graph._name_authority)
    return clone


def laid_out(params: dict[str, np.ndarray], slot: Slot, name: str) -> np.ndarray:
    """The canonical param of `slot` as from_canonical fills the parameter: float32,
    transposed where torch_name says; ReweightError when it is missing or of another shape."""
    if slot.canonical not in params:
        raise ReweightError(f"initializer {name}: the params have no {slot.canonical!r}")
    value = np.asarray(params[slot.canonical])
    value = value.T if slot.transposed else value
    if value.shape != slot.shape:
        raise ReweightError(f"initializer {name}: {slot.canonical!r} has shape {value.shape} as laid out, "
                            f"the graph's is {slot.shape}")
    return np.ascontiguousarray(value, dtype=WEIGHT_DTYPE)


def parameter_sources(model, module) -> dict[str, tuple[str, bool]]:
    """{module path in `module` (the graph's wrapper): (canonical name, transposed)} of every
    parameter of `module`, found by identity with the parameters from_canonical filled in
    `model`; ReweightError for a parameter that none fills."""
    from lmref.impl_torch.model import torch_name
    from lmref.spec.params import param_shapes

    filled = {}
    for canonical in param_shapes(model.config):
        target, transposed = torch_name(canonical)
        filled[id(model.get_parameter(target))] = (canonical, transposed)
    sources = {}
    for path, parameter in module.named_parameters(remove_duplicate=False):
        if id(parameter) not in filled:
            raise ReweightError(f"module parameter {path} is filled from no canonical param")
        sources[path] = filled[id(parameter)]
    return sources


def config_tensor_paths(module) -> dict:
    """{path in `module`: tensor} of the tensors its ConfigTensors hold (impl_torch/constants.py:
    built in __init__ from the config alone, never from params), under the names torch.export
    gives them as lifted constants."""
    from lmref.impl_torch.constants import ConfigTensors

    return {f"{path}.{name}": getattr(held, name) for path, held in module.named_modules()
            if isinstance(held, ConfigTensors) for name in held.names}


def held_by(config_tensors: dict, path: str, constant) -> bool:
    """Whether the lifted constant at `path` is the config tensor of that path."""
    import torch

    return path in config_tensors and torch.equal(constant, config_tensors[path])


def graph_slots(program, sources: dict[str, tuple[str, bool]], params: dict[str, np.ndarray],
                config_tensors: dict) -> dict[str, Slot]:
    """{initializer: Slot} of a program traced from `params`, unoptimized: each parameter its
    exported program reads (a placeholder with users: LLaVA's embed graph reads the token
    table alone) must be an initializer under its module path, or under one of its
    aliases' (a tied embedding: the exporter keeps one of `embed.tokens.weight` and
    `lm_head.weight`); so is each parameter of the wrapper that a stamped layer holds as an
    initializer under its path, which the traced program never lifted (export/stamping.py).
    Each of those initializers must be float32 and hold its canonical param as laid out (a
    check of the mapping, not a search by value).  A lifted tensor constant of more than one element must be
    one of `config_tensors` (config_tensor_paths), by its path, holding that tensor."""
    signature = program.exported_program.graph_signature
    constants = program.exported_program.constants
    lifted = sorted(name for name in signature.inputs_to_lifted_tensor_constants.values()
                    if constants[name].numel() > 1 and not held_by(config_tensors, name, constants[name]))
    if lifted:
        raise ReweightError(f"the traced graph lifts tensor constants {lifted} (tensors that are not parameters "
                            "could hold a copy of a weight; only scalars made from the config and the model's "
                            "ConfigTensors are admitted)")
    used = {node.name for node in program.exported_program.graph.nodes if node.op == "placeholder" and node.users}
    aliases: dict[tuple[str, bool], list[str]] = {}
    for placeholder, path in signature.inputs_to_parameters.items():
        if placeholder not in used:
            continue  # torch.export lifts every parameter of the wrapper; the ONNX graph keeps those it reads
        if path not in sources:
            raise ReweightError(f"parameter {path} of the traced graph is not a parameter of the wrapper")
        aliases.setdefault(sources[path], []).append(path)
    initializers = program.model.graph.initializers
    lifted_paths = set(signature.inputs_to_parameters.values())
    for path in sorted(set(sources) - lifted_paths):  # a layer stamped from a traced one (export/stamping.py)
        if path in initializers:
            aliases.setdefault(sources[path], []).append(path)
    slots = {}
    for (canonical, transposed), paths in aliases.items():
        held = [path for path in paths if path in initializers]
        if not held:
            raise ReweightError(f"parameter {' = '.join(paths)} of the traced graph is not an initializer under "
                                "its module path")
        for path in held:
            value = initializers[path].const_value
            if value is None or value.dtype.numpy() != WEIGHT_DTYPE:
                raise ReweightError(f"initializer {path} ({canonical}) is not a float32 tensor")
            slots[path] = Slot(canonical, transposed, tuple(value.shape))
            if not np.array_equal(value.numpy(), laid_out(params, slots[path], path)):
                raise ReweightError(f"initializer {path} does not hold {canonical!r} as from_canonical lays it out")
    return slots


def template(config: ModelConfig, params: dict[str, np.ndarray]) -> tuple[Template | None, dict]:
    """(the Template of `config`, or None where ReweightError refuses one; {role: ONNXProgram}
    of (config, params), finished as `trace` finishes them): one trace either way."""
    model, specs = graph_specs(config, params)
    programs = {role: export_graph(spec, optimize=False) for role, spec in specs.items()}
    try:
        slots = {role: graph_slots(programs[role], parameter_sources(model, specs[role].module), params,
                                   config_tensor_paths(specs[role].module)) for role in specs}
        kept = Template(config, {role: graph_copy(p.model) for role, p in programs.items()}, slots)
    except ReweightError:
        kept = None
    for program in programs.values():
        program.optimize()
    if kept is not None:
        refolds = {role: refold(kept.graphs[role], graph_copy(programs[role].model), kept.slots[role], params, laid_out)
                   for role in programs}
        kept = replace(kept, refolds={role: r for role, r in refolds.items() if r is not None})
    return kept, finish_programs(config, programs)
