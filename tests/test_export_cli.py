"""`lmref export` and `lmref validate-onnx` end to end, and the bad input each refuses with a
clear error: an unexportable config, a corrupted graph, a missing external-data file, a
config.json that does not match the graph, weights the graph was not exported from."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from lmref.convert.checkpoint import save_checkpoint  # noqa: E402
from lmref.cli import main  # noqa: E402
from lmref.spec import RopeScaling, init_params, tiny  # noqa: E402
from lmref.spec.outputs import MARKER  # noqa: E402

ARCH = "llama2-70b"  # GQA with groups of 4; the other presets: tests/test_export_presets.py


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """`lmref export --preset llama2-70b --seed 1 --external-data` (run once for the module)."""
    out = tmp_path_factory.mktemp("export") / "llama2-70b-onnx"
    assert main(["export", "--preset", ARCH, "--seed", "1", "--out", str(out), "--external-data"]) == 0
    return out


@pytest.fixture
def copy(out, tmp_path):
    """A copy of the export to damage."""
    return shutil.copytree(out, tmp_path / "copy")


def test_export_writes_the_graph_its_data_and_the_manifest(out):
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER, "config.json", "export.json", "model.onnx", "model.onnx.data"]  # MARKER: spec/outputs.py
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["source"] == {"kind": "preset", "preset": ARCH, "seed": 1}
    assert manifest["external_data"] is True and manifest["opset"] == 18 and manifest["tokenizer"] is None
    assert manifest["versions"]["onnx"] == onnx.__version__
    onnx.checker.check_model(str(out / "model.onnx"))  # the path form: reads the external data
    assert (out / "model.onnx").stat().st_size < (out / "model.onnx.data").stat().st_size


def test_the_rms_norms_fuse_in_onnxruntime_and_no_kv_head_is_copied(out, tmp_path):
    """export/fusable.py: no Reciprocal feeds a Mul, and onnxruntime's session turns each of the
    2 layers' 2 RMSNorms and the final one into SimplifiedLayerNormalization; the attention
    broadcasts each KV head over its query group (impl_torch/attention.py `group_queries`)."""
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert "Reciprocal" not in {n.op_type for n in graph.node}
    assert "Expand" not in {n.op_type for n in graph.node}  # GQA (groups of 4) broadcasts, copies no KV head
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath, load_external_data=False).graph
    assert [n.op_type for n in optimized.node].count("SimplifiedLayerNormalization") == 5


def test_validate_onnx_passes(out, capsys):
    assert main(["validate-onnx", str(out)]) == 0
    text = capsys.readouterr().out
    assert "8 decode steps" in text and "left-padded by 3" in text
    # 4 checks of the numbers, and the weights check (issue 10, item 10)
    assert text.count("  PASS ") == 5 and "validate-onnx: PASS (4 of 4 checks passed" in text
    assert "  PASS weights: " in text


def test_validate_onnx_fails_on_other_weights(out, tmp_path, capsys):
    config = tiny(ARCH)
    save_checkpoint(tmp_path / "other", config, init_params(config, 2))
    assert main(["validate-onnx", str(out), "--checkpoint", str(tmp_path / "other"), "--steps", "2"]) == 1
    text = capsys.readouterr().out
    assert "  FAIL prefill vs golden" in text and "failed: nmse" in text and "validate-onnx: FAIL" in text


def _error(argv, capsys, status=2) -> str:
    assert main(argv) == status
    return capsys.readouterr().err


def test_corrupted_graph(copy, capsys):
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    err = _error(["validate-onnx", str(copy)], capsys)
    assert "model.onnx: not a readable ONNX model, the file is corrupted or truncated" in err


def test_missing_external_data(copy, capsys):
    (copy / "model.onnx.data").unlink()
    err = _error(["validate-onnx", str(copy)], capsys)
    assert "model.onnx.data: missing external-data file named by model.onnx" in err


@pytest.mark.parametrize("field, value, message", [
    ("vocab_size", 300,
     "vocab_size: config.json 300, graph 251; logits have 251 entries per position, vocab_size is 300"),
    ("n_heads", 4, "n_heads: config.json 4, graph 8"),
    ("n_kv_heads", 4, "present keys are [batch, 2, seq, 16], config has n_kv_heads 4, head_dim 16"),
])
def test_config_that_does_not_match_the_graph(copy, capsys, field, value, message):
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config | {field: value}))
    err = _error(["validate-onnx", str(copy)], capsys)
    assert "config.json does not match the graph model.onnx" in err and message in err


def test_not_an_export(out, tmp_path, capsys):
    assert "no such directory" in _error(["validate-onnx", str(tmp_path / "nothing")], capsys)
    assert "export.json: no such file" in _error(["validate-onnx", str(tmp_path)], capsys)
    assert f"{out / 'model.onnx'}: a file, not the export's directory (give the --out of `lmref export`, the " \
        "folder holding it)" in _error(["validate-onnx", str(out / "model.onnx")], capsys)
    (tmp_path / "export.json").mkdir()
    assert "export.json: a directory, not a file" in _error(["validate-onnx", str(tmp_path)], capsys)


def test_cuda_asked_for_where_onnxruntime_has_none(out, capsys):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    err = _error(["validate-onnx", str(out), "--provider", "cuda"], capsys)
    assert "onnxruntime has no CUDAExecutionProvider here" in err


def test_unexportable_config_is_refused(tmp_path, capsys):
    config = tiny("llama3", rope_scaling=RopeScaling(kind="dynamic", factor=2.0))  # a feature the export (and the torch twin) lacks
    save_checkpoint(tmp_path / "ckpt", config, init_params(config, 0))
    err = _error(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "o")], capsys)
    assert "the onnx backend does not implement feature(s) of config 'llama3-tiny': rope.scaling.dynamic" in err
    assert not (tmp_path / "o").exists()


def test_export_usage_errors(tmp_path, capsys):
    assert "unknown preset 'gpt5'" in _error(["export", "--preset", "gpt5", "--out", str(tmp_path / "o")], capsys)
    assert "--seed goes with --preset" in _error(
        ["export", "--checkpoint", str(tmp_path), "--seed", "1", "--out", str(tmp_path / "o")], capsys)
    assert "no such file" in _error(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")], capsys)


def test_export_refuses_a_negative_seed_before_writing(tmp_path, capsys):
    err = _error(["export", "--preset", "llama3", "--seed", "-1", "--out", str(tmp_path / "o")], capsys)
    assert err == "lmref export: error: --seed must be a non-negative integer, got -1\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("steps", ["0", "-1"])
def test_validate_onnx_refuses_fewer_than_one_step(out, capsys, steps):
    err = _error(["validate-onnx", str(out), "--steps", steps], capsys)
    assert err == f"lmref validate-onnx: error: --steps must be at least 1, got {steps}\n"


def test_validate_onnx_refuses_steps_past_the_context(out, capsys):
    err = _error(["validate-onnx", str(out), "--steps", "100000"], capsys)
    assert "prompt length 11 + 100000 decode steps must fit max_seq_len" in err


@pytest.mark.parametrize("prompt_len", ["0", "-1"])
def test_validate_onnx_refuses_a_prompt_len_below_one(out, capsys, prompt_len):
    err = _error(["validate-onnx", str(out), "--prompt-len", prompt_len], capsys)
    assert err == f"lmref validate-onnx: error: --prompt-len must be at least 1, got {prompt_len}\n"


def test_validate_onnx_refuses_a_negative_seed(out, capsys):
    err = _error(["validate-onnx", str(out), "--seed", "-1"], capsys)
    assert err == "lmref validate-onnx: error: --seed must be a non-negative integer, got -1\n"


@pytest.mark.parametrize("option, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--prompt-len", "0"], "--prompt-len must be at least 1, got 0"),
    (["--pad", "11"], "--pad must be in [0, prompt length 11), got 11"),
    (["--seed", "-1"], "--seed must be a non-negative integer, got -1"),
])
def test_validate_onnx_checks_its_options_before_reading_the_weights(out, tmp_path, capsys, option, message):
    """A bad option was reported only after the reference weights were read (minutes for a
    large --checkpoint); here the checkpoint does not exist, and the option is named."""
    err = _error(["validate-onnx", str(out), *option, "--checkpoint", str(tmp_path / "gone")], capsys)
    assert err == f"lmref validate-onnx: error: {message}\n"


@pytest.mark.parametrize("source, expected", [
    ({"kind": "checkpoint", "path": 5}, "source: the checkpoint path must be a string, got 5"),
    ({"kind": "preset", "preset": ARCH, "seed": "x"}, "source: the seed must be a non-negative integer, got 'x'"),
    ({"kind": "preset", "preset": "gpt2", "seed": 1}, "source: the preset 'gpt2' does not give the model of"),
    ({"kind": "preset", "preset": "nope", "seed": 1}, "source: the preset 'nope' does not give the model of"),
    ({"kind": "weights"}, "source: unknown kind 'weights'"),
    (["preset"], "source must be an object"),
])
def test_validate_onnx_refuses_a_source_entry_export_does_not_write(copy, capsys, source, expected):
    """The weights validate-onnx compares against come from export.json's source: an edited one
    is refused by name (it once validated a 'gpt2' source against llama2-70b's own weights)."""
    manifest = json.loads((copy / "export.json").read_text())
    (copy / "export.json").write_text(json.dumps(manifest | {"source": source}))
    assert main(["validate-onnx", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"{copy / 'export.json'}: {expected}" in err and "Traceback" not in err, err
