"""What `lmref train` and `lmref generate` promise about the user's files and about a run's
numbers (issue 10; docs/training.md, "Guarantees"): a run writes only into a new, empty or
its own directory and deletes only checkpoints it wrote; a resume never writes into another
run; what cannot fit in memory is refused before it is allocated; a diverging run stops with
an error and no NaN checkpoint; every optimizer argument is checked; paths named inside a
checkpoint stay inside it; bad input is a message, never a traceback."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

from lmref.convert import load_checkpoint
from lmref.spec.errors import OutputError
from lmref.spec.outputs import MARKER, marker_kind
from lmref.train import checkpoint
from lmref.train.distributed import Dist
from lmref.train.errors import TrainError
from lmref.train.loop import LoopOptions, build_trainer, fit
from lmref.train.settings import RunSettings, model_config
from lmref.train.tokenizer import BPETokenizer
from lmref.spec.params import init_params
from tests.train_helpers import ROOT, TINY, copy_run, lmref, one_thread, records, run_cli, shared_run, subprocess_env

STEP = [*TINY, "--steps", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return shared_run(tmp_path_factory)


def _snapshot_files(directory) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> bytes): what must not change."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _refused(capsys, *args, status: int = 2) -> str:
    assert lmref(*args) == status
    return capsys.readouterr().err


# --- item 1: a new run writes only into a new, empty or its own directory -----------------------


def test_a_new_run_refuses_a_directory_holding_the_users_files(tmp_path, capsys):
    """issue 10, item 1: `lmref train --out DIR` into an existing directory deleted the user's
    step-* directories and overwrote their metrics.jsonl and loss.png."""
    out = tmp_path / "mine"
    (out / "step-000001").mkdir(parents=True)
    (out / "step-000001" / "notes.txt").write_text("my notes\n")
    (out / "metrics.jsonl").write_text('{"mine": true}\n')
    (out / "loss.png").write_bytes(b"my plot")
    before = _snapshot_files(out)
    err = _refused(capsys, "train", *STEP, "--out", out)
    assert f"--out {out}: the directory is not empty and not written by this command" in err
    assert "loss.png" in err and "step-000001/" in err
    assert _snapshot_files(out) == before and not (out / MARKER).exists()


def test_a_new_run_takes_a_new_or_empty_directory_and_marks_it(tmp_path, capsys):
    """issue 10, item 1: a new or empty directory is taken, and marked as a train run's."""
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "run"):
        assert lmref("train", *STEP, "--out", out) == 0
        assert marker_kind(out) == "train-run" and (out / "step-000001").is_dir()
    capsys.readouterr()
    assert "already holds a run" in _refused(capsys, "train", *STEP, "--out", tmp_path / "empty")


def test_rotation_deletes_only_checkpoints_this_run_wrote(run_dir, tmp_path):
    """issue 10, item 1: keeping the newest --keep checkpoints deletes this run's older ones,
    never a step-* directory somebody else put in the run directory."""
    out = copy_run(run_dir, tmp_path / "run")
    (out / "step-000001").mkdir()
    (out / "step-000001" / "notes.txt").write_text("mine\n")
    other = copy_run(out / "step-000003", out / "step-000002")  # a checkpoint of another run
    state = json.loads((other / "trainer_state.json").read_text())
    (other / "trainer_state.json").write_text(json.dumps(state | {"run_id": "another-run"}))
    (out / "step-000005.tmp-1").mkdir()  # not a save in progress of lmref's: no marker
    (out / "step-000005.tmp-1" / "draft.txt").write_text("mine\n")
    _, snap = checkpoint.load(out)
    for step in (7, 8):
        snap.state["step"] = step
        checkpoint.save(out, snap, keep=2)
    assert sorted(p.name for p in out.glob("step-*")) == [
        "step-000001", "step-000002", "step-000005.tmp-1", "step-000007", "step-000008"]
    assert (out / "step-000001" / "notes.txt").read_text() == "mine\n"
    assert (out / "step-000005.tmp-1" / "draft.txt").read_text() == "mine\n"


def test_a_save_never_replaces_a_step_directory_it_did_not_write(run_dir, tmp_path):
    """issue 10, item 1: a checkpoint's name taken by somebody else's directory is an error,
    not a deletion."""
    out = copy_run(run_dir, tmp_path / "run")
    (out / "step-000009").mkdir()
    (out / "step-000009" / "notes.txt").write_text("mine\n")
    _, snap = checkpoint.load(out)
    snap.state["step"] = 9
    with pytest.raises(TrainError, match="step-000009: exists and is not a checkpoint of this run"):
        checkpoint.save(out, snap, keep=2)
    assert (out / "step-000009" / "notes.txt").read_text() == "mine\n"
    assert checkpoint.resolve(out).name == "step-000006"


# --- item 2: a resume writes into its own run directory, or a new or empty one ------------------


def test_a_resume_into_another_runs_directory_is_refused(run_dir, tmp_path, capsys):
    """issue 10, item 2: `--resume A --out B`, B holding another run, overwrote B's checkpoints
    and mixed both runs in B's metrics."""
    a = copy_run(run_dir, tmp_path / "a")
    b = tmp_path / "b"
    assert lmref("train", *TINY, "--steps", "2", "--seed", "1", "--out", b) == 0
    capsys.readouterr()
    before = _snapshot_files(b)
    err = _refused(capsys, "train", "--resume", a, "--out", b, "--no-progress")
    assert f"--out {b}: holds another run" in err
    assert _snapshot_files(b) == before


def test_a_resume_into_a_foreign_directory_or_its_own_input_is_refused(run_dir, tmp_path, capsys):
    """issue 10, item 2: nor into a directory of the user's, nor into the checkpoint it reads."""
    a = copy_run(run_dir, tmp_path / "a")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    err = _refused(capsys, "train", "--resume", a, "--out", mine, "--no-progress")
    assert f"--out {mine}: the directory is not empty and not written by this command" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    err = _refused(capsys, "train", "--resume", a / "step-000006", "--out", a / "step-000006", "--no-progress")
    assert "is the command's own input" in err


def test_a_resume_into_another_checkpoint_of_its_run_is_refused(run_dir, tmp_path, capsys):
    """A checkpoint folder is no run directory, though its run_id is the run's."""
    a = copy_run(run_dir, tmp_path / "a")
    before = _snapshot_files(a)
    err = _refused(capsys, "train", "--resume", a / "step-000003", "--out", a / "step-000006", "--no-progress")
    assert f"--out {a / 'step-000006'}: is a checkpoint, not a run directory" in err
    assert _snapshot_files(a) == before


def test_a_new_run_refuses_a_run_directory_whose_latest_is_missing(run_dir, tmp_path, capsys):
    """A run killed between its first checkpoint's rename and the write of `latest` leaves its
    checkpoints and marker: a new run there would mix two runs' metrics and checkpoints."""
    a = copy_run(run_dir, tmp_path / "a")
    (a / "latest").unlink()
    before = _snapshot_files(a)
    err = _refused(capsys, "train", *STEP, "--out", a)
    assert (f"--out {a} already holds a run's checkpoints (step-000003, step-000006); --resume "
            f"{a / 'step-000006'} to continue it") in err
    assert _snapshot_files(a) == before


def test_a_resume_continues_in_its_own_directory_or_a_new_one(run_dir, tmp_path):
    """issue 10, item 2: its own run directory (given or not) and a new directory are fine."""
    a = copy_run(run_dir, tmp_path / "a")
    assert lmref("train", "--resume", a / "step-000003", "--out", a, "--stop-after", "4", "--no-progress") == 0
    assert checkpoint.resolve(a).name == "step-000004"
    fresh = tmp_path / "fresh"
    assert lmref("train", "--resume", a, "--stop-after", "5", "--out", fresh, "--no-progress") == 0
    assert marker_kind(fresh) == "train-run" and checkpoint.resolve(fresh).name == "step-000005"
    # B now holds the same run: continuing it there again is its own business
    assert lmref("train", "--resume", fresh, "--stop-after", "6", "--out", fresh, "--no-progress") == 0
    assert [r["step"] for r in records(fresh, "train")] == [5, 6]


def test_a_resume_with_nothing_to_train_makes_no_new_directory(run_dir, tmp_path, capsys):
    """A finished run resumed into a new --out, with no step left to train, is refused before the
    directory is made (it had held a marker and a metrics file); in its own directory it is a
    no-op that says so."""
    fresh = tmp_path / "fresh"
    assert lmref("train", "--resume", run_dir, "--out", fresh, "--no-progress") == 2
    assert "nothing to train" in capsys.readouterr().err and not fresh.exists()
    own = copy_run(run_dir, tmp_path / "own")
    assert lmref("train", "--resume", own, "--out", own, "--no-progress") == 0
    assert "nothing to train" in capsys.readouterr().out


# --- item 12: what cannot fit in memory is refused before it is allocated -----------------------


def test_a_model_that_cannot_fit_is_refused_with_the_estimate(tmp_path):
    """issue 10, item 12: `lmref train --d-ff 1e9` allocated until the machine died.  The child
    runs under an 8 GiB address-space limit, so a missing guard fails this test, not the machine."""
    out = tmp_path / "run"
    result = run_cli("train", *STEP, "--d-ff", "1e9", "--out", out, timeout=300, address_space=8 << 30)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "lmref train: error: training gpt2-tiny" in result.stderr
    assert "needs about" in result.stderr and "GiB, more than the" in result.stderr
    assert "--force-memory" in result.stderr and not out.exists()


def test_force_memory_trains_what_the_estimate_refuses(tmp_path, capsys, monkeypatch):
    """issue 10, item 12: the estimate is checked against the memory available; --force-memory
    (the same flag as `lmref convert`'s) overrides it."""
    monkeypatch.setattr("lmref.spec.resources.available_bytes", lambda: 1 << 20)
    err = _refused(capsys, "train", *STEP, "--out", tmp_path / "run")
    assert "needs about" in err and "more than the 0.0 GiB of memory available" in err
    assert not (tmp_path / "run").exists()
    assert lmref("train", *STEP, "--out", tmp_path / "run", "--force-memory") == 0


# --- item 14: a diverging run stops; every optimizer argument is checked ------------------------


@pytest.mark.parametrize("flag, value, rule", [
    ("--lr", "inf", "--lr must be a finite number > 0, got inf"),
    ("--lr", "nan", "--lr must be a finite number > 0, got nan"),
    ("--lr", "0", "--lr must be a finite number > 0, got 0.0"),
    ("--min-lr", "inf", "need 0 < --min-lr (inf) <= --lr (0.003), both finite"),
    ("--weight-decay", "nan", "--weight-decay must be a finite number >= 0, got nan"),
    ("--weight-decay", "-0.1", "--weight-decay must be a finite number >= 0, got -0.1"),
    ("--beta1", "2", "--beta1 must be in [0, 1) (AdamW's moment decay), got 2.0"),
    ("--beta2", "1", "--beta2 must be in [0, 1) (AdamW's moment decay), got 1.0"),
    ("--beta1", "nan", "--beta1 must be in [0, 1) (AdamW's moment decay), got nan"),
    ("--adam-eps", "-1", "--adam-eps must be a finite number > 0, got -1.0"),
    ("--adam-eps", "0", "--adam-eps must be a finite number > 0, got 0.0"),
    ("--clip", "nan", "--clip must be a finite number >= 0 (0: no clipping), got nan"),
    ("--clip", "inf", "--clip must be a finite number >= 0 (0: no clipping), got inf"),
    ("--val-fraction", "nan", "--val-fraction must be in (0, 1), got nan"),
])
def test_optimizer_arguments_are_checked(flag, value, rule, tmp_path, capsys):
    """issue 10, item 14: `--lr inf`, `--weight-decay nan` trained NaN; `--beta1 2` and
    `--adam-eps -1` were torch tracebacks; `--clip nan` was taken."""
    err = _refused(capsys, "train", *STEP, flag, value, "--out", tmp_path / "run")
    assert rule in err, err
    assert not (tmp_path / "run").exists()


def _all_finite(run) -> bool:
    return all(np.isfinite(v).all() for step in run.glob("step-*") for v in load_checkpoint(step)[1].values())


def test_a_diverging_run_stops_with_an_error_and_no_nan_checkpoint(tmp_path, capsys):
    """issue 10, item 14: a run whose loss becomes NaN or infinite exited 0 with a NaN checkpoint."""
    out = tmp_path / "run"
    err = _refused(capsys, "train", *TINY, "--steps", "6", "--save-every", "1", "--lr", "1e30", "--warmup", "0",
                   "--out", out, status=1)
    assert "lmref train: error: step 2: training diverged: the loss is" in err
    assert "no checkpoint was written for it" in err and "lower --lr" in err
    assert checkpoint.resolve(out).name == "step-000001" and _all_finite(out)
    assert [r["step"] for r in records(out, "train")] == [1]


def test_fit_refuses_a_non_finite_loss_at_the_first_step():
    """issue 10, item 14: a NaN in the weights stops the loop at once; nothing is saved."""
    run = RunSettings(arch="llama3", batch_size=2, seq_len=8, steps=3, warmup=0)
    config = model_config("llama3", {}, vocab_size=256)  # an untied head: only token 3's row is NaN
    params = {k: v.astype(np.float32) for k, v in init_params(config, 0).items()}
    params["embed.tokens"][3, 0] = np.nan
    trainer = build_trainer(config, params, run, Dist())
    train_batch, val_batch = np.full((2, 9), 3, dtype=np.int64), np.full((2, 9), 5, dtype=np.int64)

    class Stream:
        epoch = 0

        def next_batch(self):
            return train_batch

    saved, logged = [], []
    with one_thread(), pytest.raises(TrainError, match=r"step 1: training diverged: the loss is nan"):
        fit(trainer, Stream(), [val_batch], LoopOptions(eval_every=100, save_every=1, progress=False),
            logged.append, lambda: saved.append(trainer.step))
    assert saved == [] and [r["kind"] for r in logged] == ["val"] and math.isfinite(logged[0]["val_loss"])


# --- item 15: paths named in a checkpoint stay inside it ---------------------------------------


@pytest.fixture(scope="module")
def outside_tokenizer(tmp_path_factory):
    """A valid tokenizers file of 300 ids, outside any checkpoint."""
    path = tmp_path_factory.mktemp("outside") / "tokenizer.json"
    path.write_text(BPETokenizer.train("the quick brown fox jumps over the lazy dog\n" * 50, 300).to_json())
    return path


def _edit_state(run, edit) -> None:
    path = run / "step-000006" / "trainer_state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_a_tokenizer_file_outside_the_checkpoint_is_refused(run_dir, tmp_path, capsys, outside_tokenizer, how):
    """issue 10, item 15: trainer_state.json's tokenizer file must lie inside the checkpoint."""
    out = copy_run(run_dir, tmp_path / "run")
    name = str(outside_tokenizer) if how == "absolute" else f"../../{outside_tokenizer.parent.name}/tokenizer.json"
    shutil.copytree(outside_tokenizer.parent, tmp_path / outside_tokenizer.parent.name)
    _edit_state(out, lambda s: s.__setitem__("tokenizer", {"kind": "bpe", "vocab_size": 300, "file": name}))
    err = _refused(capsys, "generate", "--checkpoint", out, "--prompt", "The ", "--max-new-tokens", "2")
    assert f"names the tokenizer file {name!r}, which is not inside the checkpoint directory" in err


@pytest.mark.parametrize("where", ["latest", "files"])
def test_latest_and_the_file_list_stay_inside_the_run(run_dir, tmp_path, capsys, where):
    """issue 10, item 15: `latest` and trainer_state.json's file list name files inside, too."""
    out = copy_run(run_dir, tmp_path / "run")
    outside = copy_run(out / "step-000006", tmp_path / "elsewhere")
    if where == "latest":
        (out / "latest").write_text("../elsewhere\n")
        expected = "names the checkpoint '../elsewhere', which is not inside the run directory"
    else:
        shutil.copy(out / "step-000006" / "config.json", tmp_path / "config.json")
        _edit_state(out, lambda s: s["files"].__setitem__("../../config.json", s["files"]["config.json"]))
        expected = "names the file '../../config.json', which is not inside the checkpoint directory"
    assert outside.is_dir()
    assert expected in _refused(capsys, "generate", "--checkpoint", out, "--prompt", "The ", "--max-new-tokens", "2")


# --- item 17: clear errors instead of tracebacks ------------------------------------------------


def test_a_prompt_that_is_not_utf8_is_refused(run_dir, capsys):
    """issue 10, item 17: a non-UTF-8 --prompt (a lone surrogate, as Python decodes the shell's
    bytes) was a UnicodeEncodeError traceback."""
    err = _refused(capsys, "generate", "--checkpoint", run_dir, "--prompt", "caf\udce9", "--max-new-tokens", "2")
    assert "lmref generate: error: --prompt is not UTF-8 text: byte 0xe9 at character 3" in err


def test_a_prompt_of_raw_bytes_from_the_shell_is_refused(run_dir):
    """issue 10, item 17: the same through a real command line (argv bytes, not text)."""
    result = subprocess.run([sys.executable, "-m", "lmref.cli", "generate", "--checkpoint", str(run_dir),
                             "--prompt", b"caf\xe9", "--max-new-tokens", "2"], capture_output=True,
                            env=subprocess_env(LC_ALL="C.UTF-8"), cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert b"--prompt is not UTF-8 text: byte 0xe9 at character 3" in result.stderr
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_temperature_that_is_not_a_finite_number_is_refused(run_dir, capsys, value):
    """issue 10, item 17: `--temperature nan` was a torch traceback."""
    err = _refused(capsys, "generate", "--checkpoint", run_dir, "--prompt", "The ", "--temperature", value)
    assert f"--temperature must be a finite number >= 0 (0: greedy), got {float(value)}" in err


def test_out_naming_an_existing_file_is_refused(tmp_path, capsys):
    """issue 10, item 17: `lmref train --out FILE` was a FileExistsError traceback."""
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    assert f"--out {path}: is a file, not a directory" in _refused(capsys, "train", *STEP, "--out", path)
    assert path.read_text() == "mine\n"


@pytest.mark.parametrize("step", ["six", -1, 2.5, True, None])
def test_a_step_that_is_not_a_non_negative_integer_is_refused(run_dir, tmp_path, capsys, step):
    """issue 10, item 17: trainer_state.json with a non-integer or negative step was a traceback
    (or trained from step -1)."""
    out = copy_run(run_dir, tmp_path / "run")
    _edit_state(out, lambda s: s.__setitem__("step", step))
    err = _refused(capsys, "train", "--resume", out, "--no-progress")
    assert f"trainer_state.json: step must be a non-negative integer, got {step!r}" in err


def test_the_output_checks_are_the_library_ones():
    """OutputError is one of the errors the commands report as a message (lmref/commands/errors.py)."""
    from lmref.commands.errors import known_errors
    from lmref.spec.errors import ResourceError

    assert issubclass(OutputError, known_errors()) and issubclass(ResourceError, known_errors())


def test_convert_to_hf_takes_a_run_directory_as_export_does(run_dir, tmp_path, capsys):
    """`lmref convert --to-hf RUN` converts the checkpoint RUN/latest names, as `lmref export
    --checkpoint RUN` exports it, and leaves the run as it was."""
    before = _snapshot_files(run_dir)
    assert lmref("convert", "--to-hf", run_dir, "--out", tmp_path / "from-run") == 0
    assert lmref("convert", "--to-hf", run_dir / "step-000006", "--out", tmp_path / "from-step") == 0
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "from-run" / name).read_bytes() == (tmp_path / "from-step" / name).read_bytes(), name
    assert _snapshot_files(run_dir) == before


def test_convert_to_hf_refuses_a_damaged_checkpoint_as_export_does(run_dir, tmp_path, capsys):
    """One byte of a step's params changed: converted, the damage would pass verify (the golden
    runs on the same weights); refused by its sha256 instead, as generate and export refuse it."""
    run = copy_run(run_dir, tmp_path / "run")
    params = run / "step-000006" / "params.safetensors"
    data = bytearray(params.read_bytes())
    data[-1] ^= 1
    params.write_bytes(bytes(data))
    for source in (run, run / "step-000006"):
        assert lmref("convert", "--to-hf", source, "--out", tmp_path / "hf") == 2
        assert f"{params}: corrupted or truncated (sha256 differs from trainer_state.json)" in capsys.readouterr().err
        assert not (tmp_path / "hf").exists()

def test_every_file_of_a_run_has_the_mode_the_umask_gives(run_dir):
    """The checkpoints' safetensors too, which safetensors itself would leave at 0600."""
    mask = os.umask(0)
    os.umask(mask)
    modes = {str(p.relative_to(run_dir)): p.stat().st_mode & 0o777 for p in run_dir.rglob("*") if p.is_file()}
    assert sum(name.endswith(".safetensors") for name in modes) >= 4
    assert modes == dict.fromkeys(modes, 0o666 & ~mask)
