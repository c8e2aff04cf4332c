"""Two CPU processes (torchrun, gloo) train the same model as one process on the same global
batch, with DDP and with FSDP (fully_shard).

Tolerance: the two runs add the same numbers in another order (each process averages the
loss of its half batch, then gloo averages the gradients of the two halves), so gradients
differ in the last float32 bits (~1e-7 relative).  Losses then agree to 1e-5 relative.  AdamW
divides each gradient by the root of its running second moment, which amplifies relative
differences for the coordinates whose gradient is near zero, but never moves a parameter by
more than about lr per step: after 4 steps of lr <= 3e-3 the parameters agree to 1e-4
absolute, where one wrong step or one wrong batch would move them by ~1e-3 and the losses by
far more than 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

from lmref.convert import load_checkpoint
from tests.train_helpers import TINY, lmref, records, torchrun_train

ARGS = [*TINY[:1], "llama3", *TINY[2:], "--steps", "4", "--eval-every", "2"]  # GQA, RoPE, SwiGLU


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    assert lmref("train", *ARGS, "--out", out) == 0
    return out


def _assert_same_run(single, out) -> None:
    for kind, key in (("train", "loss"), ("val", "val_loss")):
        a, b = records(single, kind), records(out, kind)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5)
    assert records(out, "run")[0]["world_size"] == 2
    _, expected = load_checkpoint(single / "step-000004")
    _, actual = load_checkpoint(out / "step-000004")
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=1e-4, err_msg=name)


def test_ddp_two_processes_match_one(single, tmp_path):
    result = torchrun_train(tmp_path / "ddp", *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 process(es)" in result.stdout
    _assert_same_run(single, tmp_path / "ddp")


def test_fsdp_two_processes_match_one(single, tmp_path):
    result = torchrun_train(tmp_path / "fsdp", *ARGS, "--fsdp")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_run(single, tmp_path / "fsdp")
    # An FSDP checkpoint resumes in a single process (full, unsharded state inside).
    assert lmref("train", "--resume", tmp_path / "fsdp", "--steps", "4", "--no-progress") == 0


def test_fsdp_needs_torchrun(tmp_path, capsys):
    assert lmref("train", *ARGS, "--fsdp", "--out", tmp_path / "run") == 2
    assert "--fsdp shards the model over several processes: launch with" in capsys.readouterr().err
