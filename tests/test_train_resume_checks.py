"""What `lmref train --resume` checks before it writes anything: the optimizer's param groups
in trainer_state.json are exactly what the run's settings give, optimizer.safetensors holds
sound AdamW state, the run settings have their types; a refusal names the file and the entry
and leaves the run directory as it was.  A resume with nothing left to train writes nothing and
says what the user can do instead."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

from tests.train_helpers import copy_run, lmref, records, shared_run  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return shared_run(tmp_path_factory)  # TINY, 6 steps, checkpoints at 3 and 6


def _contents(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` and its bytes: what a refused command must leave alone."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _edit_state(checkpoint_dir: Path, edit) -> None:
    path = checkpoint_dir / "trainer_state.json"  # not in its own file list: no sha256 to redo
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))


def _edit_optimizer(checkpoint_dir: Path, edit) -> None:
    """Change optimizer.safetensors and record its new sha256 (a consistent, hostile checkpoint)."""
    from safetensors.torch import load_file, save_file

    path = checkpoint_dir / "optimizer.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _edit_state(checkpoint_dir, lambda s: s["files"].__setitem__(path.name, digest))


def _refused_resume(out: Path, capsys) -> str:
    """Resume `out` from its step 3 (three steps left to train): the error line, after checking
    that nothing under `out` changed."""
    before = _contents(out)
    capsys.readouterr()
    assert lmref("train", "--resume", out / "step-000003", "--no-progress") == 2
    assert _contents(out) == before  # metrics.jsonl included: no "run" record appended
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def _groups(state: dict) -> list[dict]:
    return state["optimizer"]["param_groups"]


def _shorten(groups: list[dict]) -> None:
    groups[0]["params"] = groups[0]["params"][:3]


# Each edit was resumed without a word (exit 0; maximize climbed the loss), or failed in the
# first step with a torch traceback or a bare "lmref: error: max_exp_avg_sq".
@pytest.mark.parametrize("edit, entry", [
    (lambda g: g[0].__setitem__("maximize", True), "[0].maximize is True; the run's settings give False"),
    (lambda g: g[0].__setitem__("eps", -1), "[0].eps is -1; the run's settings give 1e-08"),
    (lambda g: g[1].__setitem__("weight_decay", 1e6), "[1].weight_decay is 1000000.0; the run's settings give 0.0"),
    (lambda g: g[0].__setitem__("betas", [0.9]), "[0].betas is [0.9]; the run's settings give [0.9, 0.95]"),
    (lambda g: g[0].__setitem__("betas", [2, 3]), "[0].betas is [2, 3]; the run's settings give [0.9, 0.95]"),
    (lambda g: g[0].__setitem__("weight_decay", "x"), "[0].weight_decay is 'x'; the run's settings give 0.1"),
    (lambda g: g[0].__setitem__("amsgrad", True), "[0].amsgrad is True; the run's settings give False"),
    (lambda g: g[0].__setitem__("lr", 0.5), "[0].lr is 0.5; the run's schedule gives 0.003"),
    (lambda g: g[0].pop("fused"), "[0] has no fused entry; the run's settings give True"),
    (_shorten, "[0].params lists 3 name(s); the model has 14 parameter(s) in that group"),
    (lambda g: g[1]["params"].__setitem__(0, "lm_head.weight"),
     "[1].params[0] is 'lm_head.weight'; the model's parameter there is 'layers.0.attn_norm.weight'"),
    (lambda g: g.append(dict(g[1])), " holds 3 group(s); the run's settings give 2 (decayed matrices, then "
                                     "undecayed norms and biases)"),
])
def test_param_groups_other_than_the_runs_settings_give_are_refused(run_dir, tmp_path, capsys, edit, entry):
    out = copy_run(run_dir, tmp_path / "run")
    _edit_state(out / "step-000003", lambda s: edit(_groups(s)))
    assert _refused_resume(out, capsys) == (
        f"lmref train: error: {out / 'step-000003' / 'trainer_state.json'}: optimizer.param_groups{entry}\n")


def test_an_entry_adamw_does_not_have_is_refused(run_dir, tmp_path, capsys):
    """An extra key was "lmref: error: param_groups.0.foo", from torch's state-dict loader."""
    out = copy_run(run_dir, tmp_path / "run")
    _edit_state(out / "step-000003", lambda s: _groups(s)[0].__setitem__("foo", 1))
    err = _refused_resume(out, capsys)
    assert err.startswith(f"lmref train: error: {out / 'step-000003' / 'trainer_state.json'}: "
                          "optimizer.param_groups[0].foo is not an entry of this run's AdamW groups (they hold ")


def _set(key: str, value):
    def edit(tensors):
        import torch

        tensors[key] = value(tensors[key]) if callable(value) else torch.tensor(value)
    return edit


def _poke(value: float):
    def change(tensor):
        tensor = tensor.clone()
        tensor.view(-1)[0] = value
        return tensor
    return change


@pytest.mark.parametrize("edit, problem", [
    (_set("final_norm.weight/exp_avg_sq", lambda t: t.double()), "exp_avg_sq is float64, AdamW's state is float32"),
    (_set("final_norm.weight/exp_avg", _poke(float("nan"))), "exp_avg holds NaN or infinite values"),
    (_set("final_norm.weight/exp_avg_sq", _poke(-1.0)),
     "exp_avg_sq holds negative values (a second moment is a mean of squares, >= 0)"),
    (_set("final_norm.weight/step", -1.0),
     "step is -1; the checkpoint is at step 3, and every step updates every parameter"),
])
def test_optimizer_tensors_of_the_wrong_type_or_values_are_refused(run_dir, tmp_path, capsys, edit, problem):
    out = copy_run(run_dir, tmp_path / "run")
    _edit_optimizer(out / "step-000003", edit)
    assert _refused_resume(out, capsys) == (
        f"lmref train: error: {out / 'step-000003' / 'optimizer.safetensors'}: final_norm.weight/{problem}; "
        "the file is damaged\n")


@pytest.mark.parametrize("field, value, expected", [
    ("warmup", None, "an integer"), ("seed", "a", "an integer"), ("batch_size", 3.5, "an integer"),
    ("lr", "0.1", "a number"), ("vocab_size", 1.5, "an integer or null"), ("data", 3, "a string"),
])
def test_run_settings_of_the_wrong_type_are_named_with_their_file(run_dir, tmp_path, capsys, field, value, expected):
    """warmup null was "no valid run settings ('<' not supported between ...)"; batch_size 3.5
    "must be a multiple of processes x --grad-accum" with no file named."""
    out = copy_run(run_dir, tmp_path / "run")
    _edit_state(out / "step-000003", lambda s: s["run"].__setitem__(field, value))
    assert _refused_resume(out, capsys) == (
        f"lmref train: error: {out / 'step-000003' / 'trainer_state.json'}: no valid run settings "
        f"(run.{field} must be {expected}, got {value!r})\n")


def test_a_resume_with_nothing_to_train_writes_nothing(run_dir, tmp_path, capsys):
    """Each no-op resume of a finished run appended a "run" record to metrics.jsonl."""
    own = copy_run(run_dir, tmp_path / "own")
    before = _contents(own)
    for _ in range(2):
        assert lmref("train", "--resume", own, "--no-progress") == 0
    assert _contents(own) == before
    assert capsys.readouterr().out == (
        "lmref train: nothing to train: the run is finished (step 6 of its --steps 6); a resumed run keeps its "
        "settings, --steps included, so it cannot be extended: start a new run with a larger --steps in another "
        "--out; nothing was written\n" * 2)


def test_a_finished_run_is_not_told_to_give_a_larger_steps(run_dir, tmp_path, capsys):
    """The advice was "give a larger --steps", which a resume refuses ("--steps 7 differs from the
    checkpoint's 6"): a finished run cannot be extended, and the message says so."""
    fresh = tmp_path / "fresh"
    assert lmref("train", "--resume", run_dir, "--out", fresh, "--no-progress") == 2
    assert capsys.readouterr().err == (
        f"lmref train: error: --resume {run_dir}: nothing to train into {fresh}: the run is finished (step 6 of "
        "its --steps 6); a resumed run keeps its settings, --steps included, so it cannot be extended: start a "
        "new run with a larger --steps in another --out; nothing was written\n")
    assert not fresh.exists()


def test_a_stop_after_at_the_checkpoint_says_which_stop_after_goes_on(run_dir, tmp_path, capsys):
    """Stopped by --stop-after, the run can go on: the advice names the flag that does it, and it works."""
    fresh = tmp_path / "fresh"
    args = ["train", "--resume", run_dir / "step-000003", "--out", fresh, "--no-progress"]
    assert lmref(*args, "--stop-after", "3") == 2
    assert capsys.readouterr().err == (
        f"lmref train: error: --resume {run_dir / 'step-000003'}: nothing to train into {fresh}: the run is at "
        "step 3 and --stop-after 3 stops it there; give a --stop-after above 3 (its --steps is 6) or leave it "
        "out; nothing was written\n")
    assert lmref(*args, "--stop-after", "4") == 0
    assert [r["step"] for r in records(fresh, "train")] == [4]
