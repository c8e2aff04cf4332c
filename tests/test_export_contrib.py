"""`lmref export --ort-contrib` (export/contrib.py, export/contrib_gqa.py): the decoder with
onnxruntime's GroupQueryAttention, RotaryEmbedding and SkipSimplifiedLayerNormalization, which
must still pass `lmref validate-onnx` (a left-padded row, decode through its own cache)."""

from __future__ import annotations

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
from lmref.export.exporter import export_onnx, trace  # noqa: E402
from lmref.spec import init_params, tiny  # noqa: E402

ARCH = "llama2-70b"  # GQA with groups of 4, RoPE in the halves layout, RMSNorm


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """`lmref export --preset llama2-70b --ort-contrib` (run once for the module)."""
    out = tmp_path_factory.mktemp("export") / "contrib"
    assert main(["export", "--preset", ARCH, "--out", str(out), "--ort-contrib"]) == 0
    return out


def test_every_layer_runs_on_the_contrib_ops(out):
    """Per layer: one GroupQueryAttention, RotaryEmbedding on its queries and keys, and the two
    norms after a residual Add as SkipSimplifiedLayerNormalization (the first layer's attention
    norm reads the embedding, no Add: it stays plain, as does nothing else); the presents come
    straight from the attention (no Concat of the cache, no Softmax left)."""
    layers = tiny(ARCH).n_layers
    graph = onnx.load(str(out / "model.onnx")).graph
    ops = Counter((n.domain, n.op_type) for n in graph.node)
    assert ops[("com.microsoft", "GroupQueryAttention")] == layers
    assert ops[("com.microsoft", "RotaryEmbedding")] == 2 * layers
    assert ops[("com.microsoft", "SkipSimplifiedLayerNormalization")] == 2 * layers  # 2L + 1 norms, 2L after an Add
    assert ops[("", "Softmax")] == 0
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert {producers[o.name] for o in graph.output[1:]} == {"GroupQueryAttention"}
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["ort_contrib"]["group_query_attention"] == layers


def test_validate_onnx_passes_on_the_contrib_graph(out, capsys):
    assert main(["validate-onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert "left-padded by 3" in text and "validate-onnx: PASS (4 of 4 checks passed" in text
    assert "  PASS weights: " in text  # against a fresh export with the contrib ops


def test_the_plain_export_has_no_contrib_op(tmp_path):
    config = tiny(ARCH)
    path = export_onnx(config, init_params(config, 0), tmp_path / "plain")
    assert {n.domain for n in onnx.load(str(path)).graph.node} <= {"", "ai.onnx"}
    assert "ort_contrib" not in json.loads((tmp_path / "plain" / "export.json").read_text())


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


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama3.1", "qwen2-7b", "mistral-7b", "gemma2-9b", "gpt2", "phi-3-mini-128k",
                                  "olmo2-7b", "qwen3-8b"])
def test_validate_onnx_passes_on_other_contrib_exports(arch, tmp_path, capsys):
    """Whatever fuses (a sliding window, a softcap, LongRoPE or learned positions leave the
    attention or the RoPE plain), the graph still matches the golden."""
    assert main(["export", "--preset", arch, "--out", str(tmp_path / arch), "--ort-contrib"]) == 0
    assert main(["validate-onnx", str(tmp_path / arch)]) == 0
    assert "validate-onnx: PASS" in capsys.readouterr().out
