"""The lmref checkpoint: a directory with two files, nothing pickled.

    config.json          `ModelConfig.to_json()`: every field, readable by `ModelConfig.from_json`
    params.safetensors   the canonical parameters of spec/params.py, under their canonical
                         names and in their own dtype (float64 from `init_params`, float32
                         from a float32 HF model, ...); header metadata
                         {"format": "lmref-checkpoint", "format_version": "1"}

`save_checkpoint` and `load_checkpoint` are the only readers and writers; loading checks the
format version, the config's validity and every parameter's presence and shape, and raises
`CheckpointError` naming the file and the problem.

`save_checkpoint` claims its directory (convert/outputs.py, kind "lmref-checkpoint"): it writes
into a new or empty directory, or one it wrote before (marked with spec.outputs.MARKER), and
raises `OutputError` for an existing file or a directory holding anything else, so a call from
Python can no more overwrite somebody's config.json than the command can.  `write_checkpoint`
writes the two files into a directory the caller has already made its own (a training save
writes into the temporary directory it has just created).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from lmref.convert.errors import CheckpointError, ConversionError
from lmref.convert.outputs import CHECKPOINT_KIND, claim
from lmref.convert.safetensors_io import read_file, write_file
from lmref.spec.config import ConfigError, ModelConfig
from lmref.spec.errors import ParamsError
from lmref.spec.outputs import replace_files
from lmref.spec.params import check_params, param_shapes
from safetensors import SafetensorError, safe_open

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.safetensors"
FORMAT = "lmref-checkpoint"
FORMAT_VERSION = "1"
# What `lmref train` adds (train/checkpoint.py): a step directory's trainer state, which holds the
# sha256 of every file, and a run directory's pointer to its newest step.
TRAINER_STATE_FILE, LATEST_FILE = "trainer_state.json", "latest"


def written_by_training(path: str | Path) -> bool:
    """Whether `path` is an `lmref train` step or run directory, which is read through
    train/checkpoint.py `load_model` (every file checked against the trainer state's sha256),
    never `load_checkpoint` alone."""
    return (Path(path) / TRAINER_STATE_FILE).is_file() or (Path(path) / LATEST_FILE).is_file()


def save_checkpoint(out: str | Path, config: ModelConfig, params: dict[str, np.ndarray], *,
                    option: str = "out") -> Path:
    """Write `out`/config.json and `out`/params.safetensors (after checking params against config)
    into a new, empty or earlier lmref-checkpoint directory; `OutputError` (naming `option` and
    `out`) for anything else."""
    check_params(config, params)
    return write_checkpoint(claim(out, CHECKPOINT_KIND, option=option), config, params)


def write_checkpoint(out: str | Path, config: ModelConfig, params: dict[str, np.ndarray]) -> Path:
    """The two files of an lmref checkpoint, written into the existing directory `out`, which
    the caller owns (no claim, no marker)."""
    check_params(config, params)
    out = Path(out)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION}
    replace_files(out, {PARAMS_FILE: lambda path: write_file(path, params, metadata=metadata),
                        CONFIG_FILE: lambda path: path.write_text(config.to_json() + "\n")})
    return out


def _check_format(path: Path) -> None:
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: not an lmref checkpoint of format version {FORMAT_VERSION} (metadata {metadata}); "
            "for a Hugging Face model directory use `lmref convert --from-hf`"
        )


def load_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, params) of an lmref checkpoint directory, checked."""
    path = Path(path)
    config_path, params_path = path / CONFIG_FILE, path / PARAMS_FILE
    for required in (config_path, params_path):
        if not required.is_file():
            raise CheckpointError(f"{required}: no such file (an lmref checkpoint has {CONFIG_FILE} and {PARAMS_FILE})")
    try:
        config = ModelConfig.from_json(config_path.read_text())
    except (ConfigError, ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path}: not a valid lmref config ({e})") from None
    _check_format(params_path)
    try:
        params = read_file(params_path)
        check_params(config, params)
    except (ConversionError, ParamsError) as e:
        raise CheckpointError(f"{params_path}: {e}") from None
    return config, {name: params[name] for name in param_shapes(config)}  # canonical order
