"""Training checkpoints: layout, exact resumption, damage reported by file name, and a process
killed in the middle of a save leaving the previous checkpoint loadable."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

from lmref.convert import load_checkpoint
from lmref.convert.errors import CheckpointError
from lmref.train import checkpoint
from lmref.train.checkpoint import PAUSE_ENV
from tests.train_helpers import ROOT, TINY, copy_run, lmref, records, shared_run, subprocess_env


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return shared_run(tmp_path_factory)


def test_layout(run_dir):
    assert (run_dir / "latest").read_text().strip() == "step-000006"
    assert sorted(p.name for p in run_dir.iterdir()) == [  # the marker: the run claimed it (issue 10, item 1)
        ".lmref-output.json", "latest", "loss.png", "metrics.jsonl", "step-000003", "step-000006"]
    assert sorted(p.name for p in (run_dir / "step-000006").iterdir()) == [
        "config.json", "optimizer.safetensors", "params.safetensors", "rng.safetensors", "trainer_state.json"]
    state = json.loads((run_dir / "step-000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["data"]["position"] == 6 * 8
    assert state["run"]["arch"] == "gpt2" and state["tokenizer"] == {"kind": "byte", "vocab_size": 256}
    assert len(state["run_id"]) == 32  # what rotation deletes: this run's checkpoints only
    config, params = load_checkpoint(run_dir / "step-000006")  # also a plain lmref checkpoint
    assert config.vocab_size == 256 and params["embed.tokens"].dtype == np.float32


def test_resume_reproduces_the_uninterrupted_losses_bit_for_bit(run_dir, tmp_path):
    """The shared run went 6 steps in one go; this one stops after 2 and resumes twice."""
    out = tmp_path / "run"
    common = [*TINY, "--steps", "6", "--save-every", "3", "--eval-every", "3", "--out", out]
    assert lmref("train", *common, "--stop-after", "2") == 0
    assert lmref("train", "--resume", out, "--stop-after", "4", "--no-progress") == 0
    assert lmref("train", "--resume", out / "step-000004", "--no-progress") == 0
    for kind, key in (("train", "loss"), ("val", "val_loss")):
        expected = [(r["step"], r[key]) for r in records(run_dir, kind)]
        assert [(r["step"], r[key]) for r in records(out, kind)] == expected  # == on floats: bit for bit
    _, a = load_checkpoint(run_dir / "step-000006")
    _, b = load_checkpoint(out / "step-000006")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_keep_prunes_old_checkpoints(run_dir, tmp_path):
    out = copy_run(run_dir, tmp_path / "run")
    _, snap = checkpoint.load(out)
    for step in (7, 8):
        snap.state["step"] = step
        checkpoint.save(out, snap, keep=2)
    assert sorted(p.name for p in out.glob("step-*")) == ["step-000007", "step-000008"]
    assert checkpoint.resolve(out).name == "step-000008"


def test_rotation_deletes_only_what_the_save_wrote(run_dir, tmp_path):
    """A file of yours inside an old checkpoint, or another command's output there, outlives the
    rotation: the checkpoint's own files go, the folder stays with yours in it."""
    out = copy_run(run_dir, tmp_path / "run")
    (out / "step-000003" / "notes.txt").write_text("mine\n")
    (out / "step-000003" / "onnx").mkdir()
    (out / "step-000003" / "onnx" / "model.onnx").write_bytes(b"an export")
    _, snap = checkpoint.load(out)
    snap.state["step"] = 7
    checkpoint.save(out, snap, keep=2)
    assert sorted(p.name for p in out.glob("step-*")) == ["step-000003", "step-000006", "step-000007"]
    assert sorted(p.name for p in (out / "step-000003").iterdir()) == ["notes.txt", "onnx"]
    assert (out / "step-000003" / "onnx" / "model.onnx").read_bytes() == b"an export"


def test_a_save_over_its_own_step_stops_before_touching_a_file_of_yours(run_dir, tmp_path):
    """A run killed after the rename and before `latest` moved on leaves its step folder, which
    the next save of that step replaces; with a file of yours in it, the save stops first."""
    out = copy_run(run_dir, tmp_path / "run")
    _, snap = checkpoint.load(out)
    before = sorted(p.name for p in (out / "step-000006").iterdir())
    (out / "step-000006" / "notes.txt").write_text("mine\n")
    with pytest.raises(checkpoint.TrainError, match="step-000006: holds notes.txt, which a save does not write"):
        checkpoint.save(out, snap, keep=2)
    assert sorted(p.name for p in (out / "step-000006").iterdir()) == sorted([*before, "notes.txt"])
    assert checkpoint.resolve(out).name == "step-000006" and not list(out.glob("step-000006.tmp-*"))


def test_a_save_removes_a_killed_saves_leftovers_and_nothing_else(run_dir, tmp_path):
    """A save killed inside a write leaves its temporary (safetensors' .tmpXXXXXX, or
    write_checkpoint's .NAME.tmp-PID) beside the files it finished; the next save removes such a
    directory, never one holding other files."""
    out = copy_run(run_dir, tmp_path / "run")
    _, snap = checkpoint.load(out)
    killed, foreign = out / "step-000009.tmp-123", out / "step-000010.tmp-456"
    for directory in (killed, foreign):
        directory.mkdir()
        (directory / "config.json").write_text("{}")
        (directory / ".tmpQaZHV1").write_bytes(b"partial")
        (directory / ".params.safetensors.tmp-123").write_bytes(b"partial")  # spec/outputs.py replace_files'
    (foreign / "notes.txt").write_text("mine")
    snap.state["step"] = 7
    checkpoint.save(out, snap, keep=2)
    assert not killed.exists()
    assert sorted(p.name for p in foreign.iterdir()) == [".params.safetensors.tmp-123", ".tmpQaZHV1", "config.json",
                                                         "notes.txt"]


def test_a_save_that_fails_midway_leaves_no_half_checkpoint(run_dir, tmp_path, monkeypatch):
    """A full disk while the optimizer's file is written: the save's temporary directory is
    removed, `latest` still names the last whole checkpoint, and the error is an OSError naming
    the file (lmref/cli.py prints it as one line)."""
    from safetensors import SafetensorError

    out = copy_run(run_dir, tmp_path / "run")
    _, snap = checkpoint.load(out)
    before, latest = sorted(p.name for p in out.iterdir()), (out / "latest").read_text()

    def disk_full(tensors, path, metadata):
        Path(path).write_bytes(b"partial")
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", disk_full)
    snap.state["step"] = 7
    with pytest.raises(OSError, match="optimizer.safetensors: cannot be written"):
        checkpoint.save(out, snap, keep=2)
    assert sorted(p.name for p in out.iterdir()) == before and (out / "latest").read_text() == latest


def test_a_save_interrupted_midway_leaves_no_half_checkpoint(run_dir, tmp_path, monkeypatch):
    """Ctrl-C while the params are written: the temporary directory goes with the save."""
    out = copy_run(run_dir, tmp_path / "run")
    _, snap = checkpoint.load(out)
    before, latest = sorted(p.name for p in out.iterdir()), (out / "latest").read_text()

    def interrupted(tensors, path, metadata):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", interrupted)
    snap.state["step"] = 7
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(out, snap, keep=2)
    assert sorted(p.name for p in out.iterdir()) == before and (out / "latest").read_text() == latest


@pytest.mark.parametrize("victim, damage, message", [
    ("params.safetensors", "truncate", "params.safetensors: corrupted or truncated"),
    ("optimizer.safetensors", "flip", "optimizer.safetensors: corrupted or truncated"),
    ("rng.safetensors", "delete", "rng.safetensors: missing"),
    ("trainer_state.json", "truncate", "trainer_state.json: not readable JSON"),
    ("trainer_state.json", "nest", "trainer_state.json: not readable JSON (RecursionError"),
])
def test_damaged_checkpoint_names_the_file(run_dir, tmp_path, capsys, victim, damage, message):
    out = copy_run(run_dir, tmp_path / "run")
    path = out / "step-000006" / victim
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "nest":  # past Python's recursion limit
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpoint.load(out)
    assert lmref("train", "--resume", out) == 2
    assert message in capsys.readouterr().err


def test_missing_and_foreign_directories(tmp_path, run_dir):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        checkpoint.load(tmp_path / "absent")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(CheckpointError, match="metrics.jsonl: a file, not a checkpoint directory"):
        checkpoint.load(tmp_path / "metrics.jsonl")
    with pytest.raises(CheckpointError, match="not a training checkpoint or run directory"):
        checkpoint.load(tmp_path)
    out = copy_run(run_dir, tmp_path / "run")
    (out / "latest").write_text("step-000099\n")
    with pytest.raises(CheckpointError, match="names step-000099, which is not a complete checkpoint"):
        checkpoint.load(out)


def _wait_for(condition, timeout: float, what: str, process) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"training exited early ({process.returncode}) while waiting for {what}: "
                                 f"{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--steps", "100", "--save-every", "2", "--eval-every", "100", "--out", out]
    process = subprocess.Popen([sys.executable, "-m", "lmref.cli", "train", *map(str, args)], cwd=ROOT,
                               env=subprocess_env(**{PAUSE_ENV: "0.4"}), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "latest").exists(), 90, "the first checkpoint", process)
        # The second save has written some of its files to step-000004.tmp-PID, not all.
        _wait_for(lambda: any(p.is_dir() and any(p.iterdir()) for p in out.glob("step-000004.tmp-*")), 30,
                  "the second save to start", process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "step-000004" / "trainer_state.json").exists()
    directory, snapshot = checkpoint.load(out)  # sha256-checked
    assert directory.name == "step-000002" and snapshot.state["step"] == 2
    assert lmref("train", "--resume", out, "--stop-after", "3", "--no-progress") == 0
    assert checkpoint.resolve(out).name == "step-000003"
    assert not list(out.glob("*.tmp-*"))  # the killed save's leftovers are gone
    assert [r["step"] for r in records(out, "train")] == [1, 2, 3]


def _rewrite_state(checkpoint_dir, edit) -> None:
    """Edit trainer_state.json (it is not in its own file list) and re-hash the files it lists."""
    path = checkpoint_dir / "trainer_state.json"
    state = json.loads(path.read_text())
    edit(state)
    state["files"] = {name: hashlib.sha256((checkpoint_dir / name).read_bytes()).hexdigest() for name in state["files"]}
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("position", [10**30, 47, 0])
def test_a_data_position_other_than_the_steps_windows_is_refused(run_dir, tmp_path, capsys, position):
    """Six steps of 8 windows read 48: 10**30 was a TypeError traceback in BatchStream.next_batch."""
    out = copy_run(run_dir, tmp_path / "run")
    _rewrite_state(out / "step-000006", lambda s: s["data"].__setitem__("position", position))
    assert lmref("train", "--resume", out, "--no-progress") == 2
    assert capsys.readouterr().err == (
        f"lmref train: error: {out / 'step-000006' / 'trainer_state.json'}: data.position {position} is not where "
        "step 6 of this run reads (step x batch size 8 = 48 windows read); the checkpoint is damaged\n")


def _other_optimizer(checkpoint_dir, how: str) -> None:
    """Replace optimizer.safetensors by another valid safetensors file."""
    from safetensors.torch import load_file, save_file

    path = checkpoint_dir / "optimizer.safetensors"
    tensors = load_file(str(path))
    if how == "rng file":
        tensors = load_file(str(checkpoint_dir / "rng.safetensors"))
    elif how == "a parameter missing":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("embed.tokens.weight/")}
    else:  # another model's width
        tensors["embed.tokens.weight/exp_avg"] = tensors["embed.tokens.weight/exp_avg"][:, :32].contiguous()
    save_file(tensors, str(path))


@pytest.mark.parametrize("how, message", [
    ("rng file", "holds 'torch_cpu', which is not AdamW state of a parameter of this model (gpt2-tiny)"),
    ("a parameter missing", "no 'embed.tokens.weight/exp_avg' (3 of the model's 108 AdamW tensors missing)"),
    ("another shape", "embed.tokens.weight/exp_avg has shape [256, 32], the model's [256, 64]"),
])
def test_an_optimizer_file_that_does_not_fit_the_model_is_named(run_dir, tmp_path, capsys, how, message):
    """A valid safetensors file of other tensors, its sha256 in the file list: torch's
    RuntimeError traceback ("Missing optimizer state"), or a crash in the step for other shapes."""
    out = copy_run(run_dir, tmp_path / "run")
    _other_optimizer(out / "step-000006", how)
    _rewrite_state(out / "step-000006", lambda s: None)
    metrics = (out / "metrics.jsonl").read_text()
    assert lmref("train", "--resume", out, "--no-progress") == 2
    assert capsys.readouterr().err == (f"lmref train: error: {out / 'step-000006' / 'optimizer.safetensors'}: "
                                       f"{message}; the file is not this run's optimizer state\n")
    assert (out / "metrics.jsonl").read_text() == metrics


@pytest.mark.parametrize("arch, message", [
    ("no-such-preset", "run.arch 'no-such-preset' is not a preset of this lmref"),
    ("llama3", "run.arch 'llama3' trains llama3-tiny, config.json holds gpt2-tiny"),
])
def test_a_run_arch_that_is_not_the_models_is_refused(run_dir, tmp_path, capsys, arch, message):
    """A hand-edited run.arch resumed silently, and the run's log named the wrong model."""
    out = copy_run(run_dir, tmp_path / "run")
    _rewrite_state(out / "step-000006", lambda s: s["run"].__setitem__("arch", arch))
    metrics = (out / "metrics.jsonl").read_text()
    assert lmref("train", "--resume", out, "--no-progress") == 2
    assert capsys.readouterr().err == (f"lmref train: error: {out / 'step-000006' / 'trainer_state.json'}: "
                                       f"{message}; the checkpoint is damaged\n")
    assert (out / "metrics.jsonl").read_text() == metrics


IMAGE_BYTES = {"kind": "byte", "vocab_size": 257, "image_token_id": 256}  # ImageByteTokenizer's info


@pytest.mark.parametrize("command", [("train", "--resume"), ("generate", "--prompt", "x", "--checkpoint")])
def test_a_tokenizer_of_another_vocabulary_than_the_models_is_refused(run_dir, tmp_path, capsys, command):
    """A byte model of 256 ids given the 257-id tokenizer in trainer_state.json resumed and
    generated silently."""
    out = copy_run(run_dir, tmp_path / "run")
    _rewrite_state(out / "step-000006", lambda s: s.__setitem__("tokenizer", IMAGE_BYTES))
    assert lmref(*command, out, "--no-progress" if command[0] == "train" else "--device=cpu") == 2
    assert capsys.readouterr().err == (
        f"lmref {command[0]}: error: {out / 'step-000006' / 'trainer_state.json'}: its byte tokenizer has 257 ids "
        "and the model's vocabulary (config.json) 256; they must agree (lmref train sizes the vocabulary to the "
        "tokenizer)\n")
