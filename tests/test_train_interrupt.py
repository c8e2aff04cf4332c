"""Ctrl-C (SIGINT) during `lmref train`, `lmref shapes` and the other commands: one line saying
what is left, exit status 130, no KeyboardInterrupt traceback; shapes' folder stays consistent
(captions.tsv lists every scene file)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm", "PIL"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

from tests.train_helpers import ROOT, TINY, subprocess_env  # noqa: E402


def _interrupt(args: list[str], ready, timeout: float = 120) -> tuple[int, str]:
    """Start `python -m lmref.cli ARGS`, send SIGINT once `ready()` holds; (exit status, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "lmref.cli", *args], cwd=ROOT, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None and time.monotonic() < deadline, "the command ended before it was ready"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, err


def test_ctrl_c_during_train_is_one_line_and_exit_130(tmp_path, sigint_as_from_a_terminal):
    out = tmp_path / "run"
    status, err = _interrupt(["train", *TINY, "--steps", "100000", "--out", str(out)],
                             lambda: (out / "metrics.jsonl").is_file()
                             and '"kind": "train"' in (out / "metrics.jsonl").read_text())
    assert (status, err) == (130, "lmref train: interrupted (Ctrl-C); the checkpoints written so far are kept "
                                  "whole: --resume the run directory to go on from its latest (stopped before the "
                                  "first one, start the run again)\n")


def test_ctrl_c_during_shapes_leaves_every_scene_listed(tmp_path, sigint_as_from_a_terminal):
    out = tmp_path / "scenes"
    captions = out / "captions.tsv"
    status, err = _interrupt(["shapes", "--out", str(out), "--count", "100000"],
                             lambda: captions.is_file() and captions.read_text().count("\n") >= 20)
    assert (status, err) == (130, f"lmref shapes: interrupted (Ctrl-C); {out}/captions.tsv lists every scene "
                                  "written; run again to replace them\n")
    listed = sorted(line.split("\t")[0] for line in captions.read_text().splitlines())
    assert listed == sorted(p.name for p in out.iterdir() if p.name not in (".lmref-output.json", "captions.tsv"))


@pytest.mark.parametrize("rank, said", [(None, True), ("0", True), ("1", False)])
def test_under_torchrun_only_rank_0_says_the_interrupt_line(rank, said, monkeypatch, capsys):
    """torchrun passes Ctrl-C to every rank: one line for the run, not one per process."""
    import argparse

    from lmref.commands.errors import INTERRUPTED, interruptible

    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)

    @interruptible("train", "kept {out}")
    def stopped(args):
        raise KeyboardInterrupt

    assert stopped(argparse.Namespace(out="run")) == INTERRUPTED
    assert capsys.readouterr().err == ("lmref train: interrupted (Ctrl-C); kept run\n" if said else "")


@pytest.mark.parametrize("arch, advice", [
    ("gpt2", "--resume the run directory to go on from its latest"),
    ("llava", "a vision run cannot be resumed: start it again with another --out"),
])
def test_the_interrupt_line_gives_advice_the_run_can_follow(arch, advice, tmp_path, monkeypatch, capsys):
    """A vision run cannot be resumed (train/multimodal.py): its line does not say --resume."""
    from lmref.cli import main
    from lmref.train import session

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(session, "train", interrupted)
    assert main(["train", "--arch", arch, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("lmref train: interrupted (Ctrl-C); the checkpoints written so far are kept whole") and (
        advice in err)


def test_ctrl_c_during_export_is_one_line_and_leaves_no_half_export(tmp_path, monkeypatch, capsys):
    """Every command, not only those with a note of their own, ends a Ctrl-C with one line and
    exit status 130 (lmref/cli.py); an export stopped in its trace has written nothing."""
    pytest.importorskip("onnx")
    from lmref.cli import main
    from lmref.export import exporter

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(exporter, "trace", interrupted)
    out = tmp_path / "onnx"
    assert main(["export", "--preset", "llama3", "--out", str(out)]) == 130
    assert capsys.readouterr().err == "lmref export: interrupted (Ctrl-C)\n"
    assert not out.exists()


def test_a_subcommand_is_named_in_its_interrupt_line(monkeypatch, capsys):
    from lmref.cli import main
    from lmref.conformance import golden_export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(golden_export, "export_golden", interrupted)
    assert main(["golden", "export", "--arch", "gpt2", "--format", "hf", "--out", "never-written"]) == 130
    assert capsys.readouterr().err == "lmref golden export: interrupted (Ctrl-C)\n"
