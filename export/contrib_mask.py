"""The attention bias of the layers export/contrib_gqa.py fuses, built in 5 nodes instead of the
traced graph's 13, for `lmref export --ort-contrib`.

The traced graph builds a causal layer's bias from positions (impl_torch/masks.py `visible`,
export/decoder.py `slot_positions`; shapes for batch B, new tokens S, total T):

    slots = Where(Cast(attention_mask), CumSum(attention_mask) - 1, EMPTY_SLOT)     [B, T]
    sees = (Unsqueeze(slots) <= Unsqueeze(position_ids)) & Unsqueeze(slots != EMPTY_SLOT)  [B, S, T]
    bias = Where(Unsqueeze(sees), 0, -max)                                          [B, 1, S, T]

GroupQueryAttention applies its own causal mask by slot index (key slot <= query slot P + s,
onnxruntime/contrib_ops/cpu/bert/group_query_attention.h), and with position_ids as the graph
takes them (cumsum(attention_mask) - 1 on the real tokens, docs/onnx.md "Interface") the
positions of a row's real slots rise with their index: a real key's position is at most a real
query's exactly when its slot is at most the query's.  So what the bias must add is padding
only, Where(attention_mask, 0, -max) expanded to [B, 1, S, T] (the op takes no broadcast S).
A bias of any other form (a sliding window's band, a chunked mask) is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from lmref.export.graph_edit import const_array, const_scalar, initializer, producer
from lmref.spec.plan import EMPTY_SLOT


def _unsqueezed(value: ir.Value, axis: int) -> ir.Value | None:
    """x of Unsqueeze(x, [axis]), else None."""
    node = producer(value, "Unsqueeze")
    axes = const_array(node.inputs[1]) if node is not None else None
    return node.inputs[0] if axes is not None and axes.reshape(-1).tolist() == [axis] else None


def _is_const(value: ir.Value | None, expected: float) -> bool:
    return const_scalar(value) == expected


def _slot_positions(slots: ir.Value | None, mask: ir.Value) -> bool:
    """Whether `slots` is Where(Cast(mask), Sub(CumSum(mask), 1), EMPTY_SLOT)."""
    where = producer(slots, "Where")
    if where is None or not _is_const(where.inputs[2], EMPTY_SLOT):
        return False
    cast, sub = producer(where.inputs[0], "Cast"), producer(where.inputs[1], "Sub")
    cumsum = producer(sub.inputs[0], "CumSum") if sub is not None and _is_const(sub.inputs[1], 1) else None
    return cast is not None and cast.inputs[0] is mask and cumsum is not None and cumsum.inputs[0] is mask


def is_causal_padding_bias(bias: ir.Value, mask: ir.Value, position_ids: ir.Value) -> bool:
    """Whether `bias` is the traced causal bias of the module docstring over these inputs."""
    where = producer(bias, "Where")
    if where is None or not _is_const(where.inputs[1], 0.0) or not _is_const(where.inputs[2], np.finfo(np.float32).min):
        return False
    both = producer(_unsqueezed(where.inputs[0], 1), "And")
    causal = producer(both.inputs[0], "LessOrEqual") if both is not None else None
    written = producer(_unsqueezed(both.inputs[1], 1), "Not") if both is not None else None
    empty = producer(written.inputs[0], "Equal") if written is not None else None
    if causal is None or empty is None or not _is_const(empty.inputs[1], EMPTY_SLOT):
        return False
    slots = _unsqueezed(causal.inputs[0], 1)
    return (slots is empty.inputs[0] and _unsqueezed(causal.inputs[1], 2) is position_ids
            and _slot_positions(slots, mask))


def padding_bias(graph: ir.Graph, mask: ir.Value, shape: tuple[ir.Value, ir.Value, ir.Value]) -> list[ir.Node]:
    """The nodes of Where(attention_mask [B, T], 0, -max) as [B, 1, S, T] (the last one's output),
    `shape` the int64 [1] values B, S, T."""
    axes, zero, lowest, heads = (initializer(graph, f"gqa_bias_{n}", v) for n, v in (
        ("axes", np.array([1, 2], np.int64)), ("zero", np.array(0.0, np.float32)),
        ("min", np.array(np.finfo(np.float32).min, np.float32)), ("heads", np.array([1], np.int64))))
    batch, new, total = shape
    real = ir.node("Cast", [mask], attributes={"to": ir.DataType.BOOL}, name="gqa_bias_real")  # [B, T]
    real4 = ir.node("Unsqueeze", [real.outputs[0], axes], name="gqa_bias_real4")  # [B, 1, 1, T]
    row = ir.node("Where", [real4.outputs[0], zero, lowest], name="gqa_bias_row")  # [B, 1, 1, T]
    dims = ir.node("Concat", [batch, heads, new, total], attributes={"axis": 0}, name="gqa_bias_shape")
    bias = ir.node("Expand", [row.outputs[0], dims.outputs[0]], name="gqa_bias")  # [B, 1, S, T]
    return [real, real4, row, dims, bias]
