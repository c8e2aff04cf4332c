"""`lmref generate --onnx`: the exported graph generates the same greedy text as
`lmref generate --checkpoint` from the same training checkpoint (BPE tokenizer copied beside
the graph)."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

from lmref.export.generate import generate, load_onnx_generator  # noqa: E402
from lmref.cli import main  # noqa: E402
from lmref.spec import init_params, tiny  # noqa: E402
from lmref.train import checkpoint  # noqa: E402
from lmref.train.generate import generate as generate_torch  # noqa: E402
from lmref.train.generate import load_generator  # noqa: E402
from lmref.train.tokenizer import BPETokenizer  # noqa: E402

TEXT = "the quick brown fox jumps over the lazy dog\n" * 20 + "a stitch in time saves nine\n" * 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run directory (`lmref train`'s format) of a tiny LLaMA 3 with a BPE tokenizer."""
    tokenizer = BPETokenizer.train(TEXT, 300)
    config = tiny("llama3", vocab_size=tokenizer.vocab_size)
    snapshot = checkpoint.Snapshot(config=config, params=init_params(config, 4), optimizer={}, rng={},
                                   state={"step": 1, "tokenizer": tokenizer.info}, tokenizer_files=tokenizer.files())
    run = tmp_path_factory.mktemp("run")
    checkpoint.save(run, snapshot)
    return run


@pytest.fixture(scope="module")
def out(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(out)]) == 0
    return out


def test_export_keeps_the_tokenizer(out, run_dir):
    assert (out / "tokenizer.json").read_text() == (run_dir / "step-000001" / "tokenizer.json").read_text()
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["tokenizer"]["kind"] == "bpe"
    assert manifest["source"] == {"kind": "checkpoint", "path": str((run_dir / "step-000001").resolve())}


def test_greedy_text_is_the_torch_models(out, run_dir, capsys):
    argv = ["generate", "--prompt", "the quick", "--greedy", "--max-new-tokens", "24"]
    assert main([*argv, "--checkpoint", str(run_dir)]) == 0
    from_torch = capsys.readouterr().out
    assert main([*argv, "--onnx", str(out)]) == 0
    assert capsys.readouterr().out == from_torch


def test_greedy_tokens_are_the_torch_models(out, run_dir):
    model, tokenizer, _ = load_generator(run_dir, "cpu")
    session, _ = load_onnx_generator(out, "cpu")
    prompt = [int(i) for i in tokenizer.encode("a stitch")]
    assert generate(session, prompt, 40, temperature=0) == generate_torch(model, prompt, 40, temperature=0)
    sampled = generate(session, prompt, 10, temperature=0.8, top_k=20, seed=3)
    assert sampled == generate(session, prompt, 10, temperature=0.8, top_k=20, seed=3)  # a seed repeats


def test_generate_needs_exactly_one_source(out, run_dir, capsys):
    for sources in ([], ["--onnx", str(out), "--checkpoint", str(run_dir)]):
        assert main(["generate", "--prompt", "x", *sources]) == 2
        assert "give exactly one of --checkpoint DIR and --onnx OUT" in capsys.readouterr().err


def test_generate_errors(out, tmp_path, capsys):
    copy = shutil.copytree(out, tmp_path / "copy")
    manifest = json.loads((copy / "export.json").read_text())
    (copy / "export.json").write_text(json.dumps(manifest | {"tokenizer": None}))
    assert main(["generate", "--onnx", str(copy), "--prompt", "x"]) == 2
    assert "the export records no tokenizer" in capsys.readouterr().err
    (copy / "export.json").write_text(json.dumps(manifest | {"tokenizer": {"kind": "byte", "vocab_size": 256}}))
    assert main(["generate", "--onnx", str(copy), "--prompt", "x"]) == 2  # generated silently before
    assert capsys.readouterr().err.endswith(f"{copy / 'export.json'}: its byte tokenizer has 256 ids and the "
                                            f"model's vocabulary (config.json) {manifest['tokenizer']['vocab_size']}; "
                                            "they must agree (lmref train sizes the vocabulary to the tokenizer)\n")
    assert main(["generate", "--onnx", str(out), "--prompt", "x", "--max-new-tokens", "2000"]) == 2
    assert "exceeds the model's context max_seq_len 1024" in capsys.readouterr().err


def test_generate_on_a_provider_onnxruntime_lacks_is_refused_before_reading(tmp_path, capsys, monkeypatch):
    """--device cuda where onnxruntime has no CUDA provider: one line, exit 2 (it was a
    ProviderError traceback), said before the export is read (this folder holds none)."""
    from lmref.export import generate as onnx_generate

    monkeypatch.setattr(onnx_generate, "available_providers", lambda: ["CPUExecutionProvider"])
    assert main(["generate", "--onnx", str(tmp_path), "--prompt", "x", "--device", "cuda"]) == 2
    assert capsys.readouterr().err == ("lmref generate: error: --device cuda: onnxruntime has no "
                                       "CUDAExecutionProvider here (available: CPUExecutionProvider; install "
                                       "onnxruntime-gpu for cuda)\n")


def test_validate_onnx_reads_the_source_checkpoint(out, tmp_path, capsys):
    assert main(["validate-onnx", str(out), "--steps", "8"]) == 0
    assert "validate-onnx: PASS (4 of 4 checks passed" in capsys.readouterr().out
    copy = shutil.copytree(out, tmp_path / "copy")
    manifest = json.loads((copy / "export.json").read_text())
    (copy / "export.json").write_text(json.dumps(manifest | {"source": {"kind": "checkpoint", "path": "/gone"}}))
    assert main(["validate-onnx", str(copy)]) == 2
    assert "the checkpoint it was exported from, /gone, is gone; pass --checkpoint DIR" in capsys.readouterr().err


# Issue 11: one preset per family of new knobs generates from its checkpoint and from its
# export, past its (tiny) sliding window, so the ring-buffer pasts of the graph are exercised.
NEW_KNOBS = ["mistral-7b", "qwen3-8b", "gemma-7b", "gemma2-9b", "gemma3-4b", "olmo2-7b"]


@pytest.mark.parametrize("arch", NEW_KNOBS)
def test_every_family_generates_the_same_greedy_text_from_the_graph(arch, tmp_path, capsys):
    tokenizer = BPETokenizer.train(TEXT, 300)
    config = tiny(arch, vocab_size=tokenizer.vocab_size)
    snapshot = checkpoint.Snapshot(config=config, params=init_params(config, 4), optimizer={}, rng={},
                                   state={"step": 1, "tokenizer": tokenizer.info}, tokenizer_files=tokenizer.files())
    checkpoint.save(tmp_path / "run", snapshot)
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "onnx")]) == 0
    capsys.readouterr()
    argv = ["generate", "--prompt", "the quick", "--greedy", "--max-new-tokens", "16"]  # > the window of 5
    assert main([*argv, "--checkpoint", str(tmp_path / "run")]) == 0
    from_torch = capsys.readouterr().out
    assert main([*argv, "--onnx", str(tmp_path / "onnx")]) == 0
    assert capsys.readouterr().out == from_torch and from_torch.startswith("the quick")
