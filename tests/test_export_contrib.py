"""`lmref export --ort-contrib` (export/contrib.py, export/contrib_gqa.py): the decoder with
onnxruntime's GroupQueryAttention, RotaryEmbedding and SkipSimplifiedLayerNormalization, which
must still pass `lmref validate-onnx` (a left-padded row, decode through its own cache)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx_ir as ir  # noqa: E402

from lmref.cli import main  # noqa: E402
from lmref.export.contrib import plain_simplified_norms  # noqa: E402
from lmref.export.contrib_mask import is_causal_padding_bias  # noqa: E402
from lmref.export.exporter import export_onnx, trace  # noqa: E402
from lmref.export.vision_graphs import DECODER  # noqa: E402
from lmref.spec import init_params, tiny  # noqa: E402

ARCH = "llama2-70b"  # GQA with groups of 4, RoPE in the halves layout, RMSNorm


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """`lmref export --preset llama2-70b --ort-contrib` (run once for the module)."""
    out = tmp_path_factory.mktemp("export") / "contrib"
    assert main(["export", "--preset", ARCH, "--out", str(out), "--ort-contrib"]) == 0
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """`lmref export --preset llama2-70b`, the same weights without the contrib ops."""
    plain = tmp_path_factory.mktemp("export") / "plain"
    assert main(["export", "--preset", ARCH, "--out", str(plain)]) == 0
    return plain


def test_every_layer_runs_on_the_contrib_ops(out):
    """Per layer: one GroupQueryAttention that applies the RoPE itself, fed by one MatMul over q's,
    k's and v's weights side by side, and the two norms after a residual Add as
    SkipSimplifiedLayerNormalization (the first layer's attention norm reads the embedding, no
    Add: it stays plain, as does nothing else); the presents come straight from the attention (no
    Concat of the cache, no Softmax, no RotaryEmbedding left); the bias marks padding only, and
    the norms leave out the statistics nobody reads.  MatMuls: the packed projection, the
    attention's output, the MLP's gate, up and down per layer, and the LM head."""
    config = tiny(ARCH)
    layers = config.n_layers
    model = onnx.load(str(out / "model.onnx"))
    graph = model.graph
    ops = Counter((n.domain, n.op_type) for n in graph.node)
    assert ops[("com.microsoft", "GroupQueryAttention")] == layers
    assert ops[("com.microsoft", "RotaryEmbedding")] == 0
    assert ops[("", "MatMul")] == 5 * layers + 1
    assert ops[("com.microsoft", "SkipSimplifiedLayerNormalization")] == 2 * layers  # 2L + 1 norms, 2L after an Add
    assert ops[("", "Softmax")] == 0
    assert ops[("", "CumSum")] == ops[("", "LessOrEqual")] == 0  # the bias is padding only (contrib_mask.py)
    assert all(list(n.output[1:3]) == ["", ""] for n in graph.node if n.op_type == "SkipSimplifiedLayerNormalization")
    producers = {o: n for n in graph.node for o in n.output}
    assert {producers[o.name].op_type for o in graph.output[1:]} == {"GroupQueryAttention"}
    weights = {t.name: t for t in graph.initializer}
    packed_width = (config.n_heads + 2 * config.n_kv_heads) * config.head_dim
    for node in (n for n in graph.node if n.op_type == "GroupQueryAttention"):
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attributes["do_rotary"] == 1 and attributes["rotary_interleaved"] == 0
        assert list(node.input[1:3]) == ["", ""] and node.input[9] == "position_ids"
        assert producers[node.input[10]].op_type == "Expand"  # the padding bias [B, 1, S, T]
        projection = producers[node.input[0]]
        assert projection.op_type == "MatMul"
        assert list(weights[projection.input[1]].dims) == [config.d_model, packed_width]
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["ort_contrib"]["group_query_attention"] == layers
    assert manifest["ort_contrib"]["group_query_attention (packed qkv, rotary)"] == layers


def left_padded_run(path, config, pad: int = 3, prompt: int = 7, steps: int = 2, seed: int = 0) -> list[np.ndarray]:
    """The graph at `path` over two rows, row 1 left-padded by `pad` (attention_mask 0, position
    ids cumsum(mask) - 1 clipped at 0, as export/decoder.py takes them): a prefill from an empty
    past, then `steps` one-token steps through its own presents.  Per call, the logits and the
    presents with the padding slots zeroed (what a graph leaves there is never read)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    mask = np.ones((2, prompt), np.int64)
    mask[1, :pad] = 0
    ids = rng.integers(0, config.vocab_size, (2, prompt))
    past = {f"past_key_values.{i}.{kv}": np.zeros((2, config.n_kv_heads, 0, config.head_dim), np.float32)
            for i in range(config.n_layers) for kv in ("key", "value")}  # [B, KV, 0, hd]
    results = []
    for _ in range(steps + 1):
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)[:, -ids.shape[1]:]  # [B, S]
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(None, {"input_ids": ids, "attention_mask": mask,
                                                 "position_ids": positions} | past)))
        real = mask[:, None, :, None].astype(np.float32)  # [B, 1, T, 1]
        results += [out["logits"] * mask[:, -ids.shape[1]:, None]] + [out[n] * real for n in names[1:]]
        past = {n.replace("present.", "past_key_values.", 1): out[n] for n in names[1:]}
        ids, mask = rng.integers(0, config.vocab_size, (2, 1)), np.concatenate([mask, np.ones((2, 1), np.int64)], 1)
    return results


def test_the_contrib_graph_computes_the_plain_graphs_values(out, plain):
    """Logits and presents (the cache, keys rotated by the RoPE) of the contrib graph equal the
    plain graph's, same weights, at every real position of a left-padded batch: the prefill
    (GroupQueryAttention's RoPE at position_ids row by row, not from position_ids[0, 0]) and
    two decode steps through its own cache; float32 tolerance."""
    config = tiny(ARCH)
    reference, contrib = left_padded_run(plain / "model.onnx", config), left_padded_run(out / "model.onnx", config)
    assert len(reference) == len(contrib) == 3 * (1 + 2 * config.n_layers)
    for expected, got in zip(reference, contrib):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5)


def test_a_head_size_the_kernels_rope_refuses_keeps_q_k_v_apart(tmp_path):
    """GroupQueryAttention's CPU kernel applies its RoPE only to heads of a multiple of 16: with
    head_dim 8 each layer keeps its three projections and a RotaryEmbedding on q and on k, and
    the attention takes no rotary inputs."""
    config = dataclasses.replace(tiny(ARCH), head_dim=8, n_layers=1)
    programs = trace(config, init_params(config, 0), ort_contrib=True)
    graph = programs[DECODER].model.graph
    ops = Counter(n.op_type for n in graph)
    assert ops["GroupQueryAttention"] == 1 and ops["RotaryEmbedding"] == 2 and ops["MatMul"] == 3 + 4 + 1
    (attention,) = (n for n in graph if n.op_type == "GroupQueryAttention")
    assert attention.attributes.get_int("do_rotary", 0) == 0 and attention.inputs[7:10] == (None, None, None)


def traced_bias(compare: str = "LessOrEqual", empty: int = -1) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(bias, attention_mask, position_ids): the causal bias as export/decoder.py's graph traces
    it (contrib_mask.py's docstring), with `compare` for its k <= q and `empty` for EMPTY_SLOT."""
    mask = ir.Value(name="attention_mask", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["B", "T"]))
    positions = ir.Value(name="position_ids", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(["B", "S"]))

    def const(value, dtype=np.int64) -> ir.Value:  # an initializer's value, as the traced graph's constants are
        return ir.Value(const_value=ir.tensor(np.array(value, dtype)))

    def op(op_type: str, *inputs: ir.Value, **attributes) -> ir.Value:
        return ir.node(op_type, list(inputs), attributes=attributes).outputs[0]

    slots = op("Where", op("Cast", mask, to=ir.DataType.BOOL), op("Sub", op("CumSum", mask, const(-1)), const(1)),
               const(empty))  # [B, T]
    sees = op(compare, op("Unsqueeze", slots, const([1])), op("Unsqueeze", positions, const([2])))  # [B, S, T]
    written = op("Unsqueeze", op("Not", op("Equal", slots, const(-1))), const([1]))  # [B, 1, T]
    bias = op("Where", op("Unsqueeze", op("And", sees, written), const([1])), const(0.0, np.float32),
              const(np.finfo(np.float32).min, np.float32))  # [B, 1, S, T]
    return bias, mask, positions


@pytest.mark.parametrize("compare, empty, recognised", [("LessOrEqual", -1, True), ("Less", -1, False),
                                                        ("LessOrEqual", 0, False)])
def test_only_the_traced_causal_bias_is_replaced_by_the_padding_bias(compare, empty, recognised):
    """contrib_mask.is_causal_padding_bias: the traced causal bias, and not one that differs in a
    node (k < q) or a constant (another EMPTY_SLOT)."""
    assert is_causal_padding_bias(*traced_bias(compare, empty)) is recognised


def test_validate_onnx_passes_on_the_contrib_graph(out, capsys):
    assert main(["validate-onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert "left-padded by 3" in text and "validate-onnx: PASS (4 of 4 checks passed" in text
    assert "  PASS weights: " in text  # against a fresh export with the contrib ops


def test_the_plain_export_has_no_contrib_op(plain):
    assert {n.domain for n in onnx.load(str(plain / "model.onnx")).graph.node} <= {"", "ai.onnx"}
    assert "ort_contrib" not in json.loads((plain / "export.json").read_text())


def test_ort_contrib_with_given_programs_is_refused(tmp_path):
    config = tiny(ARCH)
    params = init_params(config, 0)
    with pytest.raises(ValueError, match="ort_contrib traces the graphs itself"):
        export_onnx(config, params, tmp_path / "x", programs=trace(config, params), ort_contrib=True)


def test_a_lone_simplified_norm_is_written_back_in_the_plain_opset(tmp_path):
    """plain_simplified_norms: the default-domain SimplifiedLayerNormalization onnx's checker does
    not know becomes Pow, ReduceMean, Add, Sqrt, Div, Mul, whose values are RMSNorm's,
    x / sqrt(mean(x^2) + eps) * w, computed here in float64."""
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 3, 8]))
    weight = ir.Value(name="w", const_value=ir.tensor(np.linspace(0.5, 2.0, 8, dtype=np.float32)))
    norm = ir.node("SimplifiedLayerNormalization", [x, weight], attributes={"axis": -1, "epsilon": 1e-3})
    norm.outputs[0].name, norm.outputs[0].type = "y", ir.TensorType(ir.DataType.FLOAT)
    norm.outputs[0].shape = x.shape
    graph = ir.Graph([x], [norm.outputs[0]], nodes=[norm], initializers=[weight], opset_imports={"": 18},
                     name="norm")
    model = ir.Model(graph, ir_version=10)
    assert plain_simplified_norms(graph) == 1
    assert "SimplifiedLayerNormalization" not in {n.op_type for n in graph}
    ir.save(model, tmp_path / "norm.onnx")
    onnx.checker.check_model(str(tmp_path / "norm.onnx"))
    values = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(str(tmp_path / "norm.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": values})
    x64 = values.astype(np.float64)
    expected = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-3) * np.linspace(0.5, 2.0, 8)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_a_rope_over_part_of_the_head_runs_in_onnxruntime(tmp_path, capsys):
    """Pythia rotates a quarter of each head: onnxscript's partial-rotary fusion gives its
    RotaryEmbedding a rotary_embedding_dim, with which onnxruntime refuses to open the graph
    unless num_heads is set too ("num_heads must be provided if rotary_embedding_dim is
    specified"); the session opens and the graph matches the golden."""
    assert main(["export", "--preset", "pythia-160m", "--out", str(tmp_path / "onnx"), "--ort-contrib"]) == 0
    rotary = [n for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node if n.op_type == "RotaryEmbedding"]
    assert rotary and all({"rotary_embedding_dim", "num_heads"} <= {a.name for a in n.attribute} for n in rotary)
    assert main(["validate-onnx", str(tmp_path / "onnx")]) == 0
    assert "validate-onnx: PASS" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama3.1", "qwen2-7b", "mistral-7b", "gemma2-9b", "gpt2", "phi-3-mini-128k",
                                  "olmo2-7b", "qwen3-8b", "phi-2"])
def test_validate_onnx_passes_on_other_contrib_exports(arch, tmp_path, capsys):
    """Whatever fuses (a sliding window, a softcap, LongRoPE or learned positions leave the
    attention or the RoPE plain), the graph still matches the golden."""
    assert main(["export", "--preset", arch, "--out", str(tmp_path / arch), "--ort-contrib"]) == 0
    assert main(["validate-onnx", str(tmp_path / arch)]) == 0
    assert "validate-onnx: PASS" in capsys.readouterr().out
