"""The attention of a decoder layer as onnxruntime's com.microsoft GroupQueryAttention, for
`lmref export --ort-contrib` (export/contrib.py runs it after the RoPE fusion).

The layer's attention in the exported graph (impl_torch's eager kernel, `group_queries`; shapes
for batch B, new tokens S, past P, total T = P + S, H query heads in KV groups of G):

    q, k, v = projections [B, S, H*hd], [B, S, KV*hd] x 2
    q_rot, k_rot = RotaryEmbedding(Transpose(Reshape(q / k)), position_ids, cos, sin)  [B, heads, S, hd]
    present.key = Concat(past.key, k_rot); present.value = Concat(past.value, Transpose(Reshape(v)))
    scores = Reshape(MatMul(Reshape(q_rot) [B, KV, G, S, hd], Transpose(Unsqueeze(present.key))))
    probs = Softmax(scores [B, H, S, T] * scale + bias)        bias [B, 1, S, T]: the mask, 0 or -max
    out = Reshape(Transpose(Reshape(MatMul(Reshape(probs), Unsqueeze(present.value)))))  [B, S, H*hd]

becomes GroupQueryAttention(RotaryEmbedding(q), RotaryEmbedding(k), v, past.key, past.value,
seqlens_k, T, attention_bias=bias; scale) with present.key / value its outputs, the two
RotaryEmbeddings on [B, S, heads*hd] with the position_ids and caches of the ones they replace.
GroupQueryAttention's own RoPE (do_rotary) is not used: in a decode step it took the positions
from seqlens_k rather than position_ids, which is wrong for a left-padded row
(validate-onnx's second row: decode top-1 0.56 with it).  Every row is
declared full (seqlens_k = T - 1): GroupQueryAttention then appends the new keys at P in each
row, as the Concat did, and its own causal mask (key index <= query index) holds every key the
bias lets through (onnxruntime/contrib_ops/cpu/bert/group_query_attention.h); the bias, the
graph's own mask, does the rest (left padding, a sliding window).  A layer whose graph differs in any
node (a softcap, QK norms, no RoPE) is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from lmref.export.decoder import present_names

CONTRIB_DOMAIN = "com.microsoft"


def producer(value: ir.Value | None, op_type: str, domain: str = "") -> ir.Node | None:
    """The node of `op_type` (in the default domain, or `domain`) that produces `value`, else None."""
    node = None if value is None else value.producer()
    domains = {domain} if domain else {"", "ai.onnx"}
    return node if node is not None and node.op_type == op_type and node.domain in domains else None


def _only_use(value: ir.Value, op_type: str) -> ir.Node | None:
    uses = list(value.uses())
    return uses[0].node if len(uses) == 1 and uses[0].node.op_type == op_type else None


def _perm(node: ir.Node | None, perm: tuple[int, ...]) -> bool:
    return node is not None and tuple(node.attributes.get_ints("perm", ())) == perm


def _projection(rotated: ir.Value) -> tuple[ir.Node, ir.Value] | None:
    """(RotaryEmbedding node, the projection [B, S, heads*hd]) of RotaryEmbedding(Transpose(Reshape(p)))."""
    rope = producer(rotated, "RotaryEmbedding", CONTRIB_DOMAIN)
    transpose = producer(rope.inputs[0], "Transpose") if rope is not None else None
    reshape = producer(transpose.inputs[0], "Reshape") if _perm(transpose, (0, 2, 1, 3)) else None
    return (rope, reshape.inputs[0]) if reshape is not None else None


def _scalar(value: ir.Value) -> float | None:
    const = value.const_value
    return None if const is None or const.numpy().size != 1 else float(const.numpy().reshape(-1)[0])


def match_layer(graph: ir.Graph, index: int) -> dict | None:
    """The pieces of layer `index`'s attention (see the module docstring), or None."""
    outputs = {v.name: v for v in graph.outputs}
    key_name, value_name = present_names(index + 1)[-2:]
    key_cat, value_cat = producer(outputs.get(key_name), "Concat"), producer(outputs.get(value_name), "Concat")
    if key_cat is None or value_cat is None:
        return None
    k = _projection(key_cat.inputs[1])
    v_t = producer(value_cat.inputs[1], "Transpose")
    v_reshape = producer(v_t.inputs[0], "Reshape") if _perm(v_t, (0, 2, 1, 3)) else None
    unsq = [u.node for u in key_cat.outputs[0].uses() if u.node.op_type == "Unsqueeze"]
    k_t = _only_use(unsq[0].outputs[0], "Transpose") if len(unsq) == 1 else None
    scores = _only_use(k_t.outputs[0], "MatMul") if _perm(k_t, (0, 1, 2, 4, 3)) else None
    if k is None or v_reshape is None or scores is None:
        return None
    q_group = producer(scores.inputs[0], "Reshape")
    q = _projection(q_group.inputs[0]) if q_group is not None else None
    chain, value = [], scores.outputs[0]
    for op_type in ("Reshape", "Mul", "Add", "Softmax", "Reshape", "MatMul", "Reshape", "Transpose", "Reshape"):
        node = _only_use(value, op_type)
        if node is None:
            return None
        chain.append(node)
        value = node.outputs[0]
    _, mul, add, softmax, _, weighted, _, transpose, _ = chain
    scale = _scalar(mul.inputs[1])
    v_unsq = producer(weighted.inputs[1], "Unsqueeze")
    if (q is None or scale is None or softmax.attributes.get_int("axis", -1) != -1 or not _perm(transpose, (0, 2, 1, 3))
            or v_unsq is None or v_unsq.inputs[0] is not value_cat.outputs[0] or add.inputs[0] is not mul.outputs[0]):
        return None
    rope = q[0]
    if k[0].inputs[1:] != rope.inputs[1:]:  # the same position_ids and caches
        return None
    return {"q": q[1], "k": k[1], "v": v_reshape.inputs[0], "past": (key_cat.inputs[0], value_cat.inputs[0]),
            "presents": (key_cat.outputs[0], value_cat.outputs[0]), "rope": rope.inputs[1:4], "scale": scale,
            "bias": add.inputs[1], "out": value, "heads": (rope, k[0])}


def _lengths(graph: ir.Graph) -> tuple[ir.Value, ir.Value]:
    """(seqlens_k int32 [B] = T - 1 in every row, total_sequence_length int32 scalar T) from the
    attention mask's shape [B, T]; the nodes go first in the graph."""
    mask = next(v for v in graph.inputs if v.name == "attention_mask")

    def const(name: str, values) -> ir.Value:
        value = ir.Value(name=f"gqa_{name}", const_value=ir.tensor(np.array(values, np.int64)))
        graph.register_initializer(value)
        return value

    shape = ir.node("Shape", [mask], name="gqa_mask_shape")
    total = ir.node("Slice", [shape.outputs[0], const("one", [1]), const("two", [2])], name="gqa_total")
    batch = ir.node("Slice", [shape.outputs[0], const("zero", [0]), const("one_b", [1])], name="gqa_batch")
    last = ir.node("Sub", [total.outputs[0], const("one_s", [1])], name="gqa_last")
    rows = ir.node("Expand", [last.outputs[0], batch.outputs[0]], name="gqa_rows")
    seqlens = ir.node("Cast", [rows.outputs[0]], attributes={"to": ir.DataType.INT32}, name="gqa_seqlens_k")
    scalar = ir.node("Squeeze", [total.outputs[0], const("axis", [0])], name="gqa_total_scalar")
    total32 = ir.node("Cast", [scalar.outputs[0]], attributes={"to": ir.DataType.INT32}, name="gqa_total_length")
    nodes = [shape, total, batch, last, rows, seqlens, scalar, total32]
    graph.insert_before(next(iter(graph)), nodes)
    return seqlens.outputs[0], total32.outputs[0]


def fuse_group_query_attention(model: ir.Model, n_layers: int, n_heads: int, n_kv_heads: int) -> int:
    """Replace every layer's attention that match_layer recognises; returns how many."""
    graph = model.graph
    layers = [(i, m) for i in range(n_layers) if (m := match_layer(graph, i)) is not None]
    if not layers:
        return 0
    seqlens, total = _lengths(graph)
    for i, m in layers:
        ropes = [ir.node("RotaryEmbedding", [m[x], *m["rope"]], domain=CONTRIB_DOMAIN, name=f"layer_{i}_rope_{x}",
                         attributes={"interleaved": 0, "num_heads": heads})
                 for x, heads in (("q", n_heads), ("k", n_kv_heads))]  # on [B, S, heads*hd]
        gqa = ir.node("GroupQueryAttention", [ropes[0].outputs[0], ropes[1].outputs[0], m["v"], *m["past"], seqlens,
                                              total, None, None, None, m["bias"]],
                      attributes={"num_heads": n_heads, "kv_num_heads": n_kv_heads, "scale": m["scale"]},
                      domain=CONTRIB_DOMAIN, num_outputs=3, name=f"layer_{i}_group_query_attention")
        graph.insert_before(next(u.node for u in m["out"].uses()), [*ropes, gqa])
        m["out"].replace_all_uses_with(gqa.outputs[0])
        for old, new in zip(m["presents"], gqa.outputs[1:]):
            position = next(j for j, v in enumerate(graph.outputs) if v is old)
            new.name, old.name = old.name, f"{old.name}_unfused"
            new.shape, new.type = old.shape, old.type
            graph.outputs[position] = new
    RemoveUnusedNodesPass()(model)
    model.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
    return len(layers)
