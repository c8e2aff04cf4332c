"""New weights in an optimized graph without running the optimizer again: export/reweight.py's
fast path, for `--impl onnx` (export/onnx_adapter.py).

The optimizer (onnxscript `optimize_ir`, export/reweight.py step 3) turns the traced graph U of
weights A into the graph G of A: each parameter either stays an initializer under its module
path, or is folded with constants of the config into an initializer that keeps the name of the
value it replaces (a Linear's `Transpose(weight)`, Gemma's `weight + 1`); the rest of G is
structure and constants of the config.  A `Refold` keeps a copy of G and, per folded
initializer, the nodes of U that compute it from parameters and constants (its cone).  For
weights B it writes each parameter's initializer as step 1 lays it out and recomputes each cone
with NumPy in float32 (Transpose, Add, Sub, Mul, Div: exact IEEE operations, the same values the
optimizer's folding computed; an op outside these refuses).  That is a fraction of a second
where the optimizer takes 0.3 s (a two-layer LLaMA) to 2 s (the six-layer Gemma 3): its
pattern-matching rules do not run.

What this takes on trust, and checks where it can: that the optimizer's choices do not depend on
the weights' values.  They do not on these graphs for weights in general position (its rules
look at shapes and at the config's constants); a weight of all ones could let a rule drop a
multiplication, which re-weighting would keep, computing the same.  `refold` refuses (None, and
the template runs the optimizer as before) a graph where it cannot account for an initializer:
a float initializer that U does not have (the optimizer made it; integer ones it makes are
shapes), a cone through another op, a parameter that neither stays nor feeds a cone.  A value
counts as made from weights when their values flow into it: not through a Shape or Size, nor
through CastLike's second input, which give only a shape or a dtype (OLMo's norm weight of
ones is Expand(1, Shape(h)); DBRX's CastLike takes a Linear's dtype).  And it
recomputes every folded initializer of A itself and refuses unless each equals the optimizer's,
bit for bit.  tests/test_export_weights_swap.py compares the result with a direct export, every
initializer and the serialized graph byte for byte, on every preset (the slow sweep).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

VALUE_INPUTS: dict[str, Callable] = {"Shape": lambda node: [], "Size": lambda node: [],
                                     "CastLike": lambda node: node.inputs[:1]}  # inputs whose values count
FOLDS: dict[str, Callable] = {"Transpose": None, "Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                              "Div": np.divide}  # the ops a cone may hold (Transpose: its perm)


@dataclass(frozen=True)
class Refold:
    """An optimized graph (never changed) and, per initializer that holds weights, how to make
    it from params: `direct` {name: parameter's own initializer name in U}, `cones` {name: the
    nodes of U, in order, that compute it}."""

    optimized: object  # onnx_ir Model
    direct: dict[str, str]
    cones: dict[str, list]
    constants: dict[str, np.ndarray]  # U's initializers and Constant nodes that hold no weight

    def values(self, slots: dict, params: dict, laid_out: Callable) -> dict[str, np.ndarray]:
        """{initializer of the optimized graph: its value for `params`}, for those that hold weights."""
        known = {name: laid_out(params, slot, name) for name, slot in slots.items()} | self.constants
        made = {name: known[source] for name, source in self.direct.items()}
        for name, cone in self.cones.items():
            values = dict(known)
            for node in cone:
                values[node.outputs[0].name] = _apply(node, [values[v.name] for v in node.inputs])
            made[name] = values[name]
        return made


def _cone(name: str, producers: dict, weights: set[str], constants: dict) -> list | None:
    """The nodes of U that compute `name` from weights and constants, producers first; None when
    one is not a FOLDS op or reads anything else (a graph input, a node outside the cone)."""
    order, seen = [], set()

    def visit(value_name: str) -> bool:
        if value_name in weights or value_name in constants or value_name in seen:
            return True
        node = producers.get(value_name)
        if node is None or node.op_type not in FOLDS or node.domain not in ("", "ai.onnx"):
            return False
        seen.add(value_name)
        if not all(v is not None and visit(v.name) for v in node.inputs):
            return False
        order.append(node)
        return True

    return order if visit(name) else None


def _depends(traced, weights: set[str]) -> set[str]:
    """The names of U's values that some weight's values flow into: not through what reads only
    a shape or a dtype, which the graph fixes (Shape, Size, CastLike's second input)."""
    dependent = set(weights)
    for node in traced.graph:  # topological order
        read = VALUE_INPUTS[node.op_type](node) if node.op_type in VALUE_INPUTS else node.inputs
        if any(v is not None and v.name in dependent for v in read):
            dependent |= {v.name for v in node.outputs}
    return dependent


def refold(traced, optimized, slots: dict, params: dict, laid_out: Callable) -> Refold | None:
    """The Refold of graph `traced` (U, unoptimized) and `optimized` (G, its optimization with
    `params`), `slots` {U's initializer: Slot} of the weights; None where it cannot account for
    an initializer of G or does not reproduce one (module docstring)."""
    weights = set(slots)
    producers = {v.name: node for node in traced.graph for v in node.outputs}
    constants = {name: v.const_value.numpy() for name, v in traced.graph.initializers.items()
                 if name not in weights and v.const_value is not None}
    constants |= {node.outputs[0].name: node.attributes["value"].as_tensor().numpy() for node in traced.graph
                  if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in node.attributes}
    dependent = _depends(traced, weights)
    direct, cones = {}, {}
    for name, value in optimized.graph.initializers.items():
        if name in weights:
            direct[name] = name
        elif name in dependent:
            if (cone := _cone(name, producers, weights, constants)) is None:
                return None
            cones[name] = cone
        elif name not in producers and name not in traced.graph.initializers:
            if value.const_value is None or value.const_value.dtype.is_floating_point():
                return None  # made by the optimizer, and could hold weights
    read = set(direct) | {v.name for cone in cones.values() for node in cone for v in node.inputs}
    if not weights <= read:
        return None  # a weight the optimizer dropped or folded where no cone reaches
    kept = Refold(optimized, direct, cones, constants)
    try:
        made = kept.values(slots, params, laid_out)
    except (TypeError, ValueError):  # a cone NumPy does not compute as the optimizer did
        return None
    return kept if all(_identical(optimized.graph.initializers[name].const_value.numpy(), value)
                       for name, value in made.items()) else None


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _apply(node, args: list[np.ndarray]) -> np.ndarray:
    if node.op_type == "Transpose":
        perm = node.attributes["perm"].as_ints() if "perm" in node.attributes else None
        return np.ascontiguousarray(np.transpose(args[0], perm))
    out = FOLDS[node.op_type](args[0], args[1])
    if out.dtype != args[0].dtype:
        raise TypeError(f"{node.op_type} of {args[0].dtype} and {args[1].dtype} gives {out.dtype}")
    return out
