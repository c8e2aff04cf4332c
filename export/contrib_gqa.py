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

becomes GroupQueryAttention(qkv, past.key, past.value, seqlens_k, T, cos_cache, sin_cache,
position_ids, attention_bias=bias, query_seqlens; scale, do_rotary=1) with present.key / value
its outputs, qkv = MatMul(x, [Wq | Wk | Wv]) [B, S, (H + 2 KV) * hd] (one Add of the three
biases after it where they have them): one MatMul over the three weights concatenated (an
initializer `layer_{i}_qkv_weight` of its own) instead of three, and the RoPE inside the kernel,
with the position_ids and caches of the RotaryEmbeddings it replaces.  That takes q, k and v to
be Linears of one input, all with a bias or none, and the RoPE full-width in the halves layout
with hd a multiple of 16 (the CPU kernel refuses do_rotary otherwise); a layer short of that
keeps q, k and v apart, each of q and k through a RotaryEmbedding on [B, S, heads*hd] before
GroupQueryAttention(q, k, v, ...) without do_rotary.

The kernel's RoPE takes position_ids row by row in a decode step, but in a first prompt (no past)
it rotates every row by position_ids[0, 0] + s, which is wrong for a left-padded row, unless
query_seqlens is given (onnxruntime 1.32's schema of the op, inputs 9 and 16; checked against
RotaryEmbedding on a left-padded batch, prefill and decode: equal bit for bit).  query_seqlens
= S in every row says each step's tokens are all real; without it validate-onnx's left-padded
decode fails (top-1 0.62), its prefill passing because RoPE's scores depend on relative positions
only while the cache keeps the mis-rotated keys.  Every row is
declared full (seqlens_k = T - 1): GroupQueryAttention then appends the new keys at P in each
row, as the Concat did, and its own causal mask (key index <= query index) holds every key the
bias lets through (onnxruntime/contrib_ops/cpu/bert/group_query_attention.h); the bias, the
graph's own mask, does the rest (left padding), and where that mask is the traced causal one,
export/contrib_mask.py's bias of the padding alone takes its place.  A layer whose graph differs in any
node (a softcap, QK norms, no RoPE) is left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from lmref.export.contrib_mask import is_causal_padding_bias, padding_bias
from lmref.export.decoder import present_names
from lmref.export.graph_edit import CONTRIB_DOMAIN, const_array, const_scalar, initializer, producer

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
    scale = const_scalar(mul.inputs[1])
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


def _linear(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None] | None:
    """(x, weight [d, n], bias [n] or None) of MatMul(x, weight) or Add(MatMul(x, weight), bias),
    weight and bias constants (torch's export of nn.Linear), else None."""
    add = producer(value, "Add")
    matmul = producer(add.inputs[0] if add is not None else value, "MatMul")
    bias = const_array(add.inputs[1]) if add is not None else None
    weight = const_array(matmul.inputs[1]) if matmul is not None else None
    if weight is None or weight.ndim != 2 or (add is not None and (bias is None or bias.shape != weight.shape[1:])):
        return None
    return matmul.inputs[0], weight, bias


def packed_projection(m: dict, n_heads: int) -> tuple[ir.Value, np.ndarray, np.ndarray | None] | None:
    """(x, W [d, (H + 2 KV) * hd], bias or None) when the layer's q, k and v are Linears of the
    same x, all with a bias or all without, and its RoPE can run inside GroupQueryAttention: the
    halves layout (interleaved 0) over the whole head (cos_cache [P, hd / 2]) and hd a multiple
    of 16 (the CPU kernel refuses other head sizes with do_rotary); else None."""
    parts = [_linear(m[x]) for x in ("q", "k", "v")]
    if any(p is None for p in parts) or any(p[0] is not parts[0][0] for p in parts):
        return None
    head_dim, rope, cos = parts[0][1].shape[1] // n_heads, m["heads"][0], const_array(m["rope"][1])
    if (rope.attributes.get_int("interleaved", 0) != 0 or rope.attributes.get_int("rotary_embedding_dim", 0) != 0
            or cos is None or cos.ndim != 2 or 2 * cos.shape[1] != head_dim or head_dim % 16):
        return None
    biases = [p[2] for p in parts]
    if any((b is None) != (biases[0] is None) for b in biases):
        return None
    weight = np.concatenate([p[1] for p in parts], axis=-1)  # [d, (H + 2 KV) * hd]: q's columns, k's, v's
    return parts[0][0], weight, None if biases[0] is None else np.concatenate(biases)  # [(H + 2 KV) * hd]


def _lengths(graph: ir.Graph, position_ids: ir.Value) -> tuple[list[ir.Node], dict[str, ir.Value]]:
    """The nodes of GroupQueryAttention's lengths from the shapes of the attention mask [B, T] and
    position_ids [B, S], and by name: seqlens_k int32 [B] = T - 1 in every row, total int32 [1]
    T (the kernel takes a scalar or a one-element vector: onnxruntime's
    group_query_attention_helper.h `IsScalarOr1ElementVector`), query_seqlens int32 [B] = S in
    every row, and B, S, T as int64 [1]."""
    mask = next(v for v in graph.inputs if v.name == "attention_mask")
    one = initializer(graph, "gqa_one", np.array([1], np.int32))
    batch = ir.node("Shape", [mask], attributes={"start": 0, "end": 1}, name="gqa_batch")  # [1]: B
    total = ir.node("Shape", [mask], attributes={"start": 1, "end": 2}, name="gqa_total")  # [1]: T
    new = ir.node("Shape", [position_ids], attributes={"start": 1, "end": 2}, name="gqa_new")  # [1]: S
    total32 = ir.node("Cast", [total.outputs[0]], attributes={"to": ir.DataType.INT32}, name="gqa_total_int32")
    last = ir.node("Sub", [total32.outputs[0], one], name="gqa_last")  # [1]: T - 1
    seqlens = ir.node("Expand", [last.outputs[0], batch.outputs[0]], name="gqa_seqlens_k")  # [B]
    new32 = ir.node("Cast", [new.outputs[0]], attributes={"to": ir.DataType.INT32}, name="gqa_new_int32")
    query = ir.node("Expand", [new32.outputs[0], batch.outputs[0]], name="gqa_query_seqlens")  # [B]
    nodes = [batch, total, new, total32, last, seqlens, new32, query]
    return nodes, {"seqlens_k": seqlens.outputs[0], "total": total32.outputs[0], "query_seqlens": query.outputs[0],
                   "mask": mask, "shape": (batch.outputs[0], new.outputs[0], total.outputs[0])}


def _bias(graph: ir.Graph, layers: list[tuple[int, dict]], lengths: dict[str, ir.Value],
          position_ids: ir.Value) -> list[ir.Node]:
    """Point every layer whose bias is the traced causal one (contrib_mask.py) at the padding
    bias; the nodes that make it, if any layer is."""
    causal = [m for _, m in layers if is_causal_padding_bias(m["bias"], lengths["mask"], position_ids)]
    if not causal:
        return []
    nodes = padding_bias(graph, lengths["mask"], lengths["shape"])
    for m in causal:
        m["bias"] = nodes[-1].outputs[0]
    return nodes


def _rotated_inputs(i: int, m: dict, heads: tuple[int, int]) -> tuple[list[ir.Node], list[ir.Value | None]]:
    """Two RotaryEmbeddings on [B, S, heads*hd] and GroupQueryAttention's query, key, value."""
    ropes = [ir.node("RotaryEmbedding", [m[x], *m["rope"]], domain=CONTRIB_DOMAIN, name=f"layer_{i}_rope_{x}",
                     attributes={"interleaved": 0, "num_heads": n}) for x, n in zip("qk", heads)]
    return ropes, [ropes[0].outputs[0], ropes[1].outputs[0], m["v"]]


def _packed_inputs(graph: ir.Graph, i: int, packed: tuple) -> tuple[list[ir.Node], list[ir.Value | None]]:
    """One MatMul (and Add) over the concatenated weights: GroupQueryAttention's packed query."""
    x, weight, bias = packed
    nodes = [ir.node("MatMul", [x, initializer(graph, f"layer_{i}_qkv_weight", weight)], name=f"layer_{i}_qkv")]
    if bias is not None:
        nodes.append(ir.node("Add", [nodes[0].outputs[0], initializer(graph, f"layer_{i}_qkv_bias", bias)],
                             name=f"layer_{i}_qkv_bias_add"))
    return nodes, [nodes[-1].outputs[0], None, None]


def fuse_group_query_attention(model: ir.Model, n_layers: int, n_heads: int, n_kv_heads: int) -> tuple[int, int]:
    """Replace every layer's attention that match_layer recognises; returns how many, and how many
    of those take packed q, k, v and do the RoPE themselves (packed_projection)."""
    graph = model.graph
    layers = [(i, m) for i in range(n_layers) if (m := match_layer(graph, i)) is not None]
    if not layers:
        return 0, 0
    packed = {i: packed_projection(m, n_heads) for i, m in layers}
    position_ids = next(v for v in graph.inputs if v.name == "position_ids")
    nodes, lengths = _lengths(graph, position_ids)
    graph.insert_before(next(iter(graph)), nodes + _bias(graph, layers, lengths, position_ids))
    for i, m in layers:
        if packed[i] is None:
            nodes, qkv = _rotated_inputs(i, m, (n_heads, n_kv_heads))
            rotary, tail, attributes = [None] * 3, [], {}
        else:
            nodes, qkv = _packed_inputs(graph, i, packed[i])
            positions, cos_cache, sin_cache = m["rope"]
            rotary = [cos_cache, sin_cache, positions]  # inputs 7, 8, 9
            tail = [None] * 5 + [lengths["query_seqlens"]]  # 11 to 15 (head_sink ... k_norm_weight) absent; 16
            attributes = {"do_rotary": 1, "rotary_interleaved": 0}
        inputs = [*qkv, *m["past"], lengths["seqlens_k"], lengths["total"], *rotary, m["bias"], *tail]
        gqa = ir.node("GroupQueryAttention", inputs,
                      attributes={"num_heads": n_heads, "kv_num_heads": n_kv_heads, "scale": m["scale"]} | attributes,
                      domain=CONTRIB_DOMAIN, num_outputs=3, name=f"layer_{i}_group_query_attention")
        graph.insert_before(next(u.node for u in m["out"].uses()), [*nodes, gqa])
        m["out"].replace_all_uses_with(gqa.outputs[0])
        for old, new in zip(m["presents"], gqa.outputs[1:]):
            position = next(j for j, v in enumerate(graph.outputs) if v is old)
            new.name, old.name = old.name, f"{old.name}_unfused"
            new.shape, new.type = old.shape, old.type
            graph.outputs[position] = new
    RemoveUnusedNodesPass()(model)
    model.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
    return len(layers), sum(p is not None for p in packed.values())
