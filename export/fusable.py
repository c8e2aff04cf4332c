"""Rewrites of the exported graph into the patterns onnxruntime fuses at session load.

torch's export of `F.rms_norm` (impl_torch/norms.py) at opset 18 decomposes it as
Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul (then Mul by the weight).  onnxruntime's
SimplifiedLayerNormFusion (onnxruntime/core/optimizer/layer_norm_fusion.cc, run at the
default ORT_ENABLE_ALL level) matches the same computation written with Div:
x / Sqrt(ReduceMean(Pow(x, 2)) + eps).  So every Reciprocal whose one use is a Mul becomes a
Div of the Mul's other input by the Reciprocal's input: the same value up to one rounding
(x * (1 / s) against x / s, both float32), and the norm then runs as one
SimplifiedLayerNormalization kernel (issue 16's profile: our non-MatMul kernels took 6.4 ms a
step against onnxruntime-genai's 1.8 ms at 124.7M).  export/exporter.py `finish_programs` runs
it on every graph, after the optimizer, in a direct export and a re-weighted one alike.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.convenience import replace_nodes_and_values


def _is_default(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ("", "ai.onnx")


def reciprocal_products_as_divisions(graph: ir.Graph) -> int:
    """Rewrite Mul(a, Reciprocal(s)) as Div(a, s) where the Reciprocal has no other use;
    returns how many were rewritten."""
    rewritten = 0
    for node in list(graph):
        if not _is_default(node, "Reciprocal") or node.outputs[0].is_graph_output():
            continue
        uses = list(node.outputs[0].uses())
        if len(uses) != 1 or not _is_default(uses[0].node, "Mul"):
            continue
        mul, index = uses[0].node, uses[0].idx
        div = ir.node("Div", inputs=[mul.inputs[1 - index], node.inputs[0]], name=f"{mul.name}_as_div")
        replace_nodes_and_values(graph, mul, [node, mul], [div], [mul.outputs[0]], [div.outputs[0]])
        rewritten += 1
    return rewritten
