"""What export/contrib.py, contrib_gqa.py and contrib_mask.py share to read and edit an onnx_ir
graph: the contrib ops' domain, the producer of a value, a constant's value, a new initializer;
and the name under which the export records how many layers became GroupQueryAttention (which
export/genai.py reads without loading onnxscript, as contrib.py would)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

CONTRIB_DOMAIN = "com.microsoft"
GQA_FUSION = "group_query_attention"  # the key of ort_contrib_ops' counts (export.json `ort_contrib`)


def producer(value: ir.Value | None, op_type: str, domain: str = "") -> ir.Node | None:
    """The node of `op_type` (in the default domain, or `domain`) that produces `value`, else None."""
    node = None if value is None else value.producer()
    domains = {domain} if domain else {"", "ai.onnx"}
    return node if node is not None and node.op_type == op_type and node.domain in domains else None


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant value of `value` (an initializer, a Constant's output), else None."""
    return None if value is None or value.const_value is None else value.const_value.numpy()


def const_scalar(value: ir.Value | None) -> float | None:
    """The one element of a constant of one element, else None."""
    array = const_array(value)
    return None if array is None or array.size != 1 else float(array.reshape(-1)[0])


def initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """A new initializer `name` of `graph` holding `array`."""
    value = ir.Value(name=name, const_value=ir.tensor(array))
    graph.register_initializer(value)
    return value
