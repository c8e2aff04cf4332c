"""The decoder graph rewritten with onnxruntime's contrib ops (`lmref export --ort-contrib`):
com.microsoft GroupQueryAttention, RotaryEmbedding and SkipSimplifiedLayerNormalization, which
only onnxruntime runs; the plain opset-18 graph stays the default (docs/onnx.md).

Four passes over the traced, optimized graph, before export/fusable.py's Div rewrite:
1. `last_axis_reductions`: a ReduceMean over the last axis written as its positive index
   (torch's export of `F.rms_norm` gives axes [2] on [B, S, d]) gets axes [-1], the form
   onnxscript's RMSNorm patterns ask for (onnxscript/rewriter/ort_fusions/rms_normalization.py).
2. `HalvesRotaryFusion`: impl_torch's RoPE in the halves layout (x1 * cos - x2 * sin,
   x2 * cos + x1 * sin, concatenated; spec/MATH.md "RoPE") on [B, heads, S, hd], its cos and
   sin computed in the graph as Cos / Sin(Cast(position_ids) * inv_freq), becomes one
   RotaryEmbedding(x, position_ids, cos_cache, sin_cache, interleaved=0): the caches hold
   cos / sin(p * inv_freq) for p < max_seq_len, in float32 as the graph computes them
   (onnxruntime/core/graph/contrib_ops/bert_defs.cc, RotaryEmbedding).  onnxscript's own
   rotary fusion matches only the rotate_half form (x * cos + Concat(-x2, x1) * sin), and
   its cos/sin cache fusion only a MatMul of inv_freq; a RoPE whose cos is computed otherwise
   (LongRoPE, YaRN's attention factor) matches neither and stays as it is.
3. export/contrib_gqa.py: each layer's attention, with its q, k, v projections, its two
   RotaryEmbeddings and the cache's Concats, becomes one MatMul over the packed q, k, v weights
   and one GroupQueryAttention that applies the RoPE itself (do_rotary, with position_ids and
   query_seqlens); where the projections or the RoPE do not allow that, q, k and v stay three
   MatMuls and q and k keep a RotaryEmbedding each.  The layers' causal bias becomes a bias of
   the padding alone, 5 nodes instead of 13 (export/contrib_mask.py says why that is the same
   mask there).  onnxscript's own attention fusions (SDPA,
   then GroupQueryAttention) do not fire on this graph: they match SDPA's decomposition with
   the KV heads repeated, where ours broadcasts them over query groups (impl_torch
   `group_queries`).
4. onnxscript's `optimize_for_ort` (0.7): the RMSNorms become SimplifiedLayerNormalization,
   a residual Add before one becomes SkipSimplifiedLayerNormalization.  A norm with no
   residual Add before it (the first layer's first) stays a SimplifiedLayerNormalization in
   the default domain, where onnxruntime registers it (not com.microsoft) and onnx's checker
   knows no such op: `plain_simplified_norms` writes it back as x / Sqrt(ReduceMean(x^2) + eps)
   * w, the form onnxruntime fuses into the same kernel at session load (export/fusable.py).
   `unnamed_norm_statistics` then leaves out the SkipSimplifiedLayerNormalizations' mean and
   inverse standard deviation outputs that nothing reads.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.convenience import replace_nodes_and_values
from onnxscript.rewriter import pattern

from lmref.export.contrib_gqa import fuse_group_query_attention
from lmref.export.graph_edit import CONTRIB_DOMAIN, GQA_FUSION, const_array, initializer, producer


def last_axis_reductions(graph: ir.Graph) -> int:
    """Rewrite ReduceMean's axes [rank - 1] as [-1] (same reduction); returns how many."""
    rewritten = 0
    for node in graph:
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
            continue
        axes, shape = const_array(node.inputs[1]), node.inputs[0].shape
        if axes is None or shape is None or axes.tolist() != [len(shape) - 1]:
            continue
        node.replace_input_with(1, initializer(graph, f"{node.name}_last_axis", np.array([-1], np.int64)))
        rewritten += 1
    return rewritten


def rope_source(cos: ir.Value, sin: ir.Value) -> tuple[ir.Value, np.ndarray] | None:
    """(position_ids, inv_freq [half]) when cos and sin are Cos / Sin of one
    Mul(Unsqueeze(Unsqueeze(Cast(position_ids))), inv_freq [1, 1, 1, half]), else None."""
    cos_node, sin_node = producer(cos, "Cos"), producer(sin, "Sin")
    if cos_node is None or sin_node is None or cos_node.inputs[0] is not sin_node.inputs[0]:
        return None
    mul = producer(cos_node.inputs[0], "Mul")
    if mul is None:
        return None
    angles, inv_freq = mul.inputs
    if const_array(inv_freq) is None:
        angles, inv_freq = inv_freq, angles
    freqs = const_array(inv_freq)
    value = angles
    for op_type in ("Unsqueeze", "Unsqueeze", "Cast"):  # [B, 1, S, 1] <- [B, 1, S] <- float [B, S]
        node = producer(value, op_type)
        if node is None:
            return None
        value = node.inputs[0]
    if freqs is None or freqs.ndim != 4 or freqs.shape[:3] != (1, 1, 1) or not value.is_graph_input():
        return None
    return value, freqs.reshape(-1).astype(np.float32)


class HalvesRotaryFusion(pattern.RewriteRuleClassBase):
    """impl_torch's halves-layout RoPE -> com.microsoft RotaryEmbedding (see the module docstring)."""

    def __init__(self, max_positions: int):
        super().__init__(name="HalvesRotaryEmbedding")
        self.max_positions = max_positions
        self._caches = {}  # inv_freq bytes -> (cos_cache, sin_cache): one pair for every layer

    def pattern(self, op, x, cos, sin, start1, end1, start2, end2):
        x1 = op.Slice(x, start1, end1, [3], [1])  # [B, H, S, hd / 2]
        x2 = op.Slice(x, start2, end2, [3], [1])
        return op.Concat(op.Sub(op.Mul(x1, cos), op.Mul(x2, sin)), op.Add(op.Mul(x2, cos), op.Mul(x1, sin)), axis=-1)

    def check(self, context, x, cos, sin, start1, end1, start2, end2, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if x.shape is None or len(x.shape) != 4 or not all(isinstance(x.shape[i], int) for i in (1, 3)):
            return result.fail("x is not [B, H, S, hd] with known heads and head_dim", x)
        half = x.shape[3] // 2
        bounds = [const_array(v) for v in (start1, end1, start2, end2)]
        if any(b is None or b.size != 1 for b in bounds):
            return result.fail("the slice bounds are not constants")
        s1, e1, s2, e2 = (int(b.reshape(-1)[0]) for b in bounds)
        if (s1, e1, s2) != (0, half, half) or e2 < x.shape[3]:
            return result.fail("x is not split into two halves", x)
        source = rope_source(cos, sin)
        if source is None or source[1].size != half:
            return result.fail("cos / sin are not Cos / Sin(position_ids * inv_freq)", cos)
        self._source = source
        return result

    def rewrite(self, op, x, **_):
        position_ids, inv_freq = self._source
        if inv_freq.tobytes() not in self._caches:
            angles = np.arange(self.max_positions, dtype=np.float32)[:, None] * inv_freq[None]  # [P, hd / 2]
            self._caches[inv_freq.tobytes()] = (op.Constant(value=ir.tensor(np.cos(angles).astype(np.float32))),
                                                op.Constant(value=ir.tensor(np.sin(angles).astype(np.float32))))
        cos_cache, sin_cache = self._caches[inv_freq.tobytes()]
        # num_heads, which a 4-d x does not need, onnxruntime requires once onnxscript's partial-rotary
        # fusion adds rotary_embedding_dim (a RoPE over part of the head: Phi-2, Pythia)
        return op.RotaryEmbedding(x, position_ids, cos_cache, sin_cache, interleaved=0, num_heads=x.shape[1],
                                  _domain=CONTRIB_DOMAIN)


def fuse_rotary(model: ir.Model, max_positions: int) -> int:
    """Apply HalvesRotaryFusion; returns how many RoPEs it replaced."""
    rules = pattern.RewriteRuleSet([HalvesRotaryFusion.rule(max_positions)])
    count = rules.apply_to_model(model)
    if count:
        model.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
    return count


def plain_simplified_norms(graph: ir.Graph) -> int:
    """Rewrite default-domain SimplifiedLayerNormalization(x, w) over the last axis as
    Mul(Div(x, Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), eps))), w); returns how many."""
    rewritten = 0
    for node in list(graph):
        if node.op_type != "SimplifiedLayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        if node.attributes.get_int("axis", -1) != -1 or len(node.outputs) > 1 and node.outputs[1].uses():
            continue
        x, weight = node.inputs[:2]
        eps = node.attributes.get_float("epsilon", 1e-5)
        two, axes, epsilon = (initializer(graph, f"{node.name}_{n}", v) for n, v in
                              (("two", np.array(2.0, np.float32)), ("axes", np.array([-1], np.int64)),
                               ("eps", np.array(eps, np.float32))))
        square = ir.node("Pow", [x, two], name=f"{node.name}_pow")
        mean = ir.node("ReduceMean", [square.outputs[0], axes], name=f"{node.name}_mean", attributes={"keepdims": 1})
        shifted = ir.node("Add", [mean.outputs[0], epsilon], name=f"{node.name}_add")
        rms = ir.node("Sqrt", [shifted.outputs[0]], name=f"{node.name}_sqrt")
        normed = ir.node("Div", [x, rms.outputs[0]], name=f"{node.name}_div")
        scaled = ir.node("Mul", [normed.outputs[0], weight], name=f"{node.name}_mul")
        replace_nodes_and_values(graph, node, [node], [square, mean, shifted, rms, normed, scaled],
                                 [node.outputs[0]], [scaled.outputs[0]])
        rewritten += 1
    return rewritten


def unnamed_norm_statistics(graph: ir.Graph) -> int:
    """Leave out (name "") the outputs 1 and 2 (mean, inverse standard deviation) of every
    SkipSimplifiedLayerNormalization that nothing reads: onnxruntime writes them when they are
    named, about 1.7 us a node a decode step at 9.3M (benchmarks/README.md); returns how many."""
    left_out = 0
    for node in graph:
        if node.op_type != "SkipSimplifiedLayerNormalization" or node.domain != CONTRIB_DOMAIN:
            continue
        for value in node.outputs[1:3]:
            if value.name and not value.uses() and not value.is_graph_output():
                value.name = ""
                left_out += 1
    return left_out


def ort_contrib_ops(model: ir.Model, max_positions: int, heads: tuple[int, int, int]) -> dict[str, int]:
    """Rewrite `model` in place with the four passes; {fusion: count} of those that fired."""
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    counts = {"last_axis_reductions": last_axis_reductions(model.graph),
              "rotary_embedding (halves)": fuse_rotary(model, max_positions)}
    attention, packed = fuse_group_query_attention(model, *heads)
    counts |= {GQA_FUSION: attention, f"{GQA_FUSION} (packed qkv, rotary)": packed}
    _, fused = optimize_for_ort(model)
    counts |= fused
    plain_simplified_norms(model.graph)
    unnamed_norm_statistics(model.graph)
    model.opset_imports.setdefault(CONTRIB_DOMAIN, 1)
    return {name: n for name, n in counts.items() if n}
