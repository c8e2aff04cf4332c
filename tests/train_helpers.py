"""Shared pieces of the training tests: small runs through the real command line.

`TINY` is a GPT-2-shaped model of 182k parameters on 8 windows of 32 bytes per step: a step
takes a few milliseconds, so a test pays mostly for torch's import and the corpus.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from lmref.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--arch", "gpt2", "--seq-len", "32", "--batch-size", "8", "--warmup", "2", "--eval-batches", "1",
        "--no-progress"]
_SHARED: dict[str, Path] = {}


@contextmanager
def one_thread():
    """torch on one thread: on 2 shared cores, OpenMP threads of these tiny models mostly wait
    for each other (a step runs many times slower with 2 threads when the cores are busy)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def lmref(*args: str) -> int:
    """`lmref ARGS` in this process (torch on one thread); its return code."""
    with one_thread():
        return main([str(a) for a in args])


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == kind]


def shared_run(tmp_path_factory) -> Path:
    """A finished 6-step TINY run (checkpoints at steps 3 and 6), trained once per session;
    copy it before changing anything in it."""
    if "run" not in _SHARED:
        out = tmp_path_factory.mktemp("shared-run") / "run"
        assert lmref("train", *TINY, "--steps", "6", "--save-every", "3", "--eval-every", "3", "--out", out) == 0
        _SHARED["run"] = out
    return _SHARED["run"]


def copy_run(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child `python -m lmref.cli`: this checkout first on the path,
    one thread per process (the tests share 2 cores)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 120,
            address_space: int | None = None) -> subprocess.CompletedProcess:
    """`python -m lmref.cli ARGS` in a child.  `address_space`: its cap in bytes, so that a
    missing memory guard fails the test, not the machine; the child sets it itself before it
    imports lmref (a preexec_fn would fork this process, which JAX, threaded once imported,
    warns against)."""
    command = ["-m", "lmref.cli"]
    if address_space is not None:
        command = ["-c", f"import resource, runpy; resource.setrlimit(resource.RLIMIT_AS, ({address_space}, "
                         f"{address_space})); runpy.run_module('lmref.cli', run_name='__main__', alter_sys=True)"]
    return subprocess.run([sys.executable, *command, *map(str, args)], capture_output=True, text=True,
                          env=env or subprocess_env(), timeout=timeout, cwd=ROOT)


def torchrun_train(out: Path, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 --standalone -m lmref.cli train ARGS --out OUT`: two CPU
    processes (gloo).  torchrun's log folder goes beside OUT: left to itself, torchrun makes a
    torchelastic_* folder in the system's temp folder and leaves it there."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               "--log-dir", str(out.parent / "torchrun-logs"), "-m", "lmref.cli", "train", *map(str, args),
               "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=240)
