"""Training checkpoints: everything a run needs to continue bit for bit, nothing pickled.

A run directory (`--out`) holds numbered checkpoints and a pointer to the newest complete one:

    RUN/latest                      "step-000300": the name of the newest complete checkpoint
    RUN/step-000300/
        config.json                 ModelConfig        } an lmref checkpoint (convert/checkpoint.py):
        params.safetensors          canonical params   } `lmref convert --to-hf` reads this directory
        optimizer.safetensors       AdamW state per parameter: "{name}/exp_avg", "/exp_avg_sq", "/step"
        rng.safetensors             "torch_cpu" (and "torch_cuda" on a GPU): rank 0's generator states, uint8
        tokenizer.json              the BPE tokenizer (BPE runs only)
        trainer_state.json          format, step, data position and corpus sha256, run settings,
                                    saved options, tokenizer, the optimizer's scalar state (param
                                    groups), world size, torch version, the sha256 of every other file

Writing is atomic: the files go to `step-N.tmp-<pid>/`, each is fsync'ed, trainer_state.json
last; the directory is renamed to `step-N/`, then `latest` is replaced (write `latest.tmp`,
fsync, os.replace).  A process killed at any point leaves `latest` naming the previous,
complete checkpoint; leftover `step-N.tmp-<pid>` directories are removed by the next save.
Loading checks every file's sha256, so a truncated or altered file is reported by name.

Deleting: a save deletes only what a save wrote.  Every checkpoint records its run's `run_id`
(a random id drawn when the run starts, kept on --resume); keeping the newest `keep`
checkpoints deletes only `step-N` directories whose trainer_state.json carries this run's id,
and in them only the files it lists (the directory too once empty); a leftover temporary
directory only when it holds nothing but checkpoint files, and a save never replaces a
`step-N` directory of anybody else's, or one holding files of anybody else's (TrainError).  `latest`, the file list
of trainer_state.json and its tokenizer file name paths inside their directory
(convert/paths.py); anything else is refused.

The NumPy and Python RNGs are not used by training (the data order is a pure function of the
seed and the data position), so only torch's generator states are saved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmref.convert.checkpoint import (
    CONFIG_FILE, LATEST_FILE, PARAMS_FILE, TRAINER_STATE_FILE, load_checkpoint, write_checkpoint,
)
from lmref.convert.errors import CheckpointError
from lmref.convert.outputs import HF_KIND
from lmref.convert.paths import inside
from lmref.convert.safetensors_io import as_umask_allows
from lmref.spec.config import ModelConfig
from lmref.spec.outputs import REPLACING_NAME, json_object_or_none, marker_kind
from lmref.train.errors import TrainError

STATE_FILE = TRAINER_STATE_FILE
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
LATEST = LATEST_FILE
FORMAT = "lmref-train-checkpoint"
FORMAT_VERSION = 1
# Test hook: seconds to sleep after each file written, so a test can kill a process mid-save.
PAUSE_ENV = "LMREF_TRAIN_SAVE_PAUSE"
STEP_NAME = re.compile(r"step-(\d+)")  # a checkpoint directory's name
TMP_NAME = re.compile(r"step-\d+\.tmp-\d+")  # a save in progress (or killed)
# safetensors' save_file writes through a temporary beside its target (Rust's tempfile crate:
# ".tmp" and 6 letters or digits) and renames it: a kill inside that write leaves one behind.
SAFETENSORS_TMP_NAME = re.compile(r"\.tmp[A-Za-z0-9]{6}")
TOKENIZER_FILES = ("tokenizer.json",)  # train/tokenizer.py's TOKENIZER_FILE (a BPE run's)


def new_run_id() -> str:
    """The id of a new run, recorded in each of its checkpoints (what rotation may delete)."""
    return uuid.uuid4().hex


def run_directory(checkpoint_dir: Path) -> Path:
    """The run directory a checkpoint belongs to: RUN for RUN/step-N, else the directory itself."""
    return checkpoint_dir.parent if STEP_NAME.fullmatch(checkpoint_dir.name) else checkpoint_dir


@dataclass
class Snapshot:
    """What one checkpoint holds (the tensors already on the CPU)."""

    config: ModelConfig
    params: dict[str, np.ndarray]  # canonical layout
    optimizer: dict[str, torch.Tensor]  # flattened "{name}/{key}"
    rng: dict[str, torch.Tensor]
    state: dict  # trainer_state.json without "files"
    tokenizer_files: dict[str, str]  # file name -> text (tokenizer.json of a BPE run)


# --- writing -----------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _written(path: Path) -> None:
    """Make a just-written file durable (and pause for the kill-during-save test)."""
    _fsync(path)
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if pause:
        time.sleep(pause)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _state_of(directory: Path) -> dict | None:
    """trainer_state.json of `directory` as a dict, None when it has none that reads."""
    return json_object_or_none(directory / STATE_FILE)


def written_by(directory: Path, run_id: str | None) -> bool:
    """Whether `directory` is a checkpoint of the run `run_id` (so that run may delete it)."""
    state = _state_of(directory)
    return run_id is not None and state is not None and state.get("format") == FORMAT and state.get("run_id") == run_id


def _leftover(directory: Path) -> bool:
    """Whether `directory` (named like a save in progress) holds only what a save writes."""
    names = {CONFIG_FILE, PARAMS_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE, *TOKENIZER_FILES,
             f"{STATE_FILE}.tmp"}  # _write_text_atomic's own temporary, when the kill lands inside it
    return all(p.is_file() and (p.name in names or SAFETENSORS_TMP_NAME.fullmatch(p.name)
                                or ((m := REPLACING_NAME.fullmatch(p.name)) is not None and m["name"] in names))
               for p in directory.iterdir())


def save(run_dir: str | Path, snapshot: Snapshot, keep: int = 2) -> Path:
    """Write `snapshot` as RUN/step-{step:06d}/, point RUN/latest at it, keep the newest
    `keep` checkpoints of this run (`snapshot.state["run_id"]`).  Returns the checkpoint
    directory.  The caller has claimed RUN (session.py)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = snapshot.state.get("run_id")
    name = f"step-{snapshot.state['step']:06d}"
    final = run_dir / name
    if final.exists() and not written_by(final, run_id):
        raise TrainError(f"{final}: exists and is not a checkpoint of this run; it is left as it is and the "
                         "run stops here (move it away and --resume to go on)")
    if final.exists() and (foreign := sorted(p.name for p in final.iterdir() if p.name not in _saved_files(final))):
        raise TrainError(f"{final}: holds {', '.join(foreign)}, which a save does not write; it is left as it is "
                         "and the run stops here (move those away and --resume to go on)")
    for stale in run_dir.glob("step-*.tmp-*"):
        if TMP_NAME.fullmatch(stale.name) and stale.is_dir() and _leftover(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir / f"{name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
    except FileExistsError:
        raise TrainError(f"{tmp}: exists and holds files a save does not write; move it away") from None
    try:
        _write_snapshot(tmp, snapshot)
    except BaseException:  # a full disk, Ctrl-C: no half checkpoint is left (a kill leaves it to the next save)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # this run's, left by a run killed after the rename and before `latest` moved on
        _remove_checkpoint(final)
    os.rename(tmp, final)
    _fsync(run_dir)
    _write_text_atomic(run_dir / LATEST, name + "\n")
    _prune(run_dir, keep, run_id)
    return final


def _write_snapshot(tmp: Path, snapshot: Snapshot) -> None:
    """Every file of a checkpoint, trainer_state.json (their sha256) last, synced; OSError when
    one cannot be written (safetensors' own error for a full disk included)."""
    write_checkpoint(tmp, snapshot.config, snapshot.params)
    for written in (CONFIG_FILE, PARAMS_FILE):
        _written(tmp / written)
    for tensors, file_name in ((snapshot.optimizer, OPTIMIZER_FILE), (snapshot.rng, RNG_FILE)):
        try:
            save_file(tensors, str(tmp / file_name), metadata={"format": FORMAT})
        except SafetensorError as e:
            raise OSError(f"{tmp / file_name}: cannot be written ({e})") from None
        as_umask_allows(tmp / file_name)
        _written(tmp / file_name)
    for file_name, text in snapshot.tokenizer_files.items():
        (tmp / file_name).write_text(text, encoding="utf-8")
        _written(tmp / file_name)
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    state = {"format": FORMAT, "format_version": FORMAT_VERSION} | snapshot.state | {"files": files}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
    _written(tmp / STATE_FILE)
    _fsync(tmp)


def _prune(run_dir: Path, keep: int, run_id: str | None) -> None:
    """Remove all but the newest `keep` complete checkpoints of the run `run_id` (never the
    one `latest` names, never a directory of anybody else's)."""
    latest = (run_dir / LATEST).read_text().strip()
    done = [p for p in step_folders(run_dir) if written_by(p, run_id)]
    for old in done[: max(0, len(done) - keep)]:
        if old.name != latest:
            _remove_checkpoint(old)


def _saved_files(directory: Path) -> set[str]:
    """The names a save wrote into the checkpoint `directory`: those its trainer_state.json
    lists, and that file (plain names only, never a path out of `directory`)."""
    listed = (_state_of(directory) or {}).get("files", {})
    names = {*(listed if isinstance(listed, dict) else {}), STATE_FILE}
    return {name for name in names if Path(name).name == name and name not in (".", "..")}


def _remove_checkpoint(directory: Path) -> None:
    """Delete what a save wrote into `directory` (_saved_files), then `directory` if nothing
    else is left: a file of anybody else's stays."""
    for name in _saved_files(directory):
        with contextlib.suppress(OSError):  # a folder by that name now is not what the save wrote
            (directory / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: somebody else's files are in it
        directory.rmdir()


# --- reading -----------------------------------------------------------------------------------


def step_folders(run_dir: Path) -> list[Path]:
    """The checkpoints in `run_dir` (step-N folders holding a trainer_state.json), oldest first."""
    if not run_dir.is_dir():
        return []
    return sorted((p for p in run_dir.glob("step-*") if p.is_dir() and STEP_NAME.fullmatch(p.name)
                   and (p / STATE_FILE).is_file()), key=lambda p: int(p.name[5:]))


def resolve(path: str | Path) -> Path:
    """A checkpoint directory: `path` itself, or the one a run directory's `latest` names."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: a file, not a checkpoint directory (give the run's or a step-N directory)")
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if (path / STATE_FILE).is_file():
        return path
    if (path / LATEST).is_file():
        try:
            name = (path / LATEST).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path / LATEST}: not readable ({e})") from None
        target = inside(path, name, "checkpoint", str(path / LATEST), CheckpointError, "run directory")
        if not (target / STATE_FILE).is_file():
            raise CheckpointError(f"{path / LATEST}: names {target.name}, which is not a complete checkpoint "
                                  f"(no {target / STATE_FILE})")
        return target
    other = _other_model_folder(path)
    if other:
        raise CheckpointError(f"{path}: {other[0]}, not a run of `lmref train` ({other[1]}); --resume and "
                              "generate --checkpoint take a run directory of `lmref train` or one of its step-N "
                              "checkpoints")
    raise CheckpointError(f"{path}: not a training checkpoint or run directory (no {STATE_FILE} or {LATEST})")


def _other_model_folder(path: Path) -> tuple[str, str] | None:
    """(what a folder holding a model that `lmref train` did not write is, what takes it), or
    None when it is none of those."""
    kind = marker_kind(path)
    if kind == "onnx-export" or (path / "export.json").is_file():  # export/exporter.py OUTPUT_KIND, MANIFEST_FILE
        return "an ONNX export (`lmref export`)", f"generate from it with `lmref generate --onnx {path}`"
    if not (path / CONFIG_FILE).is_file():
        return None
    config = json_object_or_none(path / CONFIG_FILE)
    if kind == HF_KIND or (config is not None and "model_type" in config):
        return ("a Hugging Face model folder (its config.json has a model_type)",
                "`lmref convert --from-hf` reads it; it has no lmref tokenizer to generate with")
    return (f"an lmref model checkpoint without {STATE_FILE}",
            "no tokenizer or run settings; `lmref export` and `lmref convert --to-hf` read it")


def read_state(directory: Path) -> dict:
    path = directory / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested past the stack
        raise CheckpointError(f"{path}: not readable JSON ({type(e).__name__}: {e}); the checkpoint is "
                              "damaged") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not an {FORMAT} of format version {FORMAT_VERSION}")
    return state


# Entries of trainer_state.json that resuming reads.
_REQUIRED = (("step",), ("run",), ("tokenizer",), ("options",), ("data", "position"), ("data", "sha256"),
             ("optimizer", "param_groups"))


def _count(value: object) -> bool:
    """A non-negative integer (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entries(path: Path, state: dict) -> None:
    for keys in _REQUIRED:
        value = state
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                raise CheckpointError(f"{path}: no {'.'.join(keys)} entry; the checkpoint is damaged")
            value = value[key]
    for name, value in (("step", state["step"]), ("data.position", state["data"]["position"])):
        if not _count(value):
            raise CheckpointError(f"{path}: {name} must be a non-negative integer, got {value!r}; "
                                  "the checkpoint is damaged")
    for name in ("run", "tokenizer", "options"):
        if not isinstance(state[name], dict):
            raise CheckpointError(f"{path}: {name} must be a JSON object, got {state[name]!r}")
    if not isinstance(state["optimizer"]["param_groups"], list):
        raise CheckpointError(f"{path}: optimizer.param_groups must be a list")


def _verify(directory: Path, files: dict[str, str]) -> None:
    where = str(directory / STATE_FILE)
    for file_name in files:  # every name checked before any file is read
        inside(directory, file_name, "file", where, CheckpointError, "checkpoint directory")
    for file_name, expected in files.items():
        path = directory / file_name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {STATE_FILE})")
        if _sha256(path) != expected:
            raise CheckpointError(f"{path}: corrupted or truncated (sha256 differs from {STATE_FILE})")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load(path: str | Path) -> tuple[Path, Snapshot]:
    """(checkpoint directory, its snapshot), every file checked against its sha256."""
    directory = resolve(path)
    state = read_state(directory)
    files = state.pop("files", None)
    if not isinstance(files, dict) or not {CONFIG_FILE, PARAMS_FILE, OPTIMIZER_FILE, RNG_FILE} <= set(files):
        raise CheckpointError(f"{directory / STATE_FILE}: no complete file list; the checkpoint is damaged")
    _check_entries(directory / STATE_FILE, state)
    _verify(directory, files)
    config, params = load_checkpoint(directory)
    optimizer = _load_tensors(directory / OPTIMIZER_FILE)
    rng = _load_tensors(directory / RNG_FILE)
    if "torch_cpu" not in rng:
        raise CheckpointError(f"{directory / RNG_FILE}: no torch_cpu generator state")
    return directory, Snapshot(config, params, optimizer, rng, state, tokenizer_files={})


def load_model(path: str | Path) -> tuple[Path, ModelConfig, dict[str, np.ndarray], dict]:
    """(directory, config, params, trainer state) for generation: no optimizer tensors read."""
    directory = resolve(path)
    state = read_state(directory)
    files = state.pop("files", {})
    if not isinstance(files, dict):
        raise CheckpointError(f"{directory / STATE_FILE}: no complete file list; the checkpoint is damaged")
    _verify(directory, {k: v for k, v in files.items() if k not in (OPTIMIZER_FILE, RNG_FILE)})
    config, params = load_checkpoint(directory)
    return directory, config, params, state
