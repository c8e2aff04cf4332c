"""`lmref convert`: the command-line face of the converters.

    lmref convert --from-hf DIR --out CKPT          HF model directory -> lmref checkpoint
    lmref convert --to-hf CKPT --out DIR            lmref checkpoint -> HF model directory
    lmref convert --preset NAME [--seed S] [--full] [--format lmref|hf] --out OUT
                                                    spec.init_params of a preset -> OUT

A preset source is `tiny(NAME)` (2 layers, head_dim 16, vocab 251: the golden's size) unless
`--full` asks for the published size, which allocates every parameter in float64 (8 bytes
each: 53 GB for mpt; meant for small presets such as gpt2).  `--dtype` casts the weights
written (default: keep them, float64 for a preset).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lmref.convert.checkpoint import load_checkpoint, save_checkpoint
from lmref.convert.errors import CheckpointError, ConversionError
from lmref.convert.hf import from_hf, to_hf
from lmref.spec.config import ConfigError, ModelConfig
from lmref.spec.errors import ParamsError
from lmref.spec.params import init_params, param_count
from lmref.spec.presets import get_preset, tiny

DTYPES = ("float64", "float32", "float16")


def _describe(config: ModelConfig, params: dict[str, np.ndarray]) -> str:
    dtypes = ", ".join(sorted({v.dtype.name for v in params.values()}))
    return f"{config.name}: {param_count(config):,} parameters, {dtypes}"


def _cast(params: dict[str, np.ndarray], dtype: str | None) -> dict[str, np.ndarray]:
    return params if dtype is None else {k: v.astype(dtype) for k, v in params.items()}


def _preset_source(args: argparse.Namespace) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    config = get_preset(args.preset) if args.full else tiny(args.preset)
    if args.full:
        print(f"--full: allocating {param_count(config):,} float64 parameters "
              f"({param_count(config) * 8 / 1e9:.2f} GB)")
    return config, init_params(config, 0 if args.seed is None else args.seed)


def check_options(args: argparse.Namespace) -> str | None:
    """A usage problem with the options (None when they fit together)."""
    if args.preset is None:
        used = [flag for flag, given in (("--seed", args.seed is not None), ("--full", args.full),
                                         ("--format", args.format is not None)) if given]
        if used:
            return f"{', '.join(used)}: only with --preset"
    elif args.seed is not None and args.seed < 0:
        return f"--seed must be a non-negative integer, got {args.seed}"
    return None


def _read(args: argparse.Namespace) -> tuple[ModelConfig, dict[str, np.ndarray], str]:
    """(config, params, the format to write) of the source the options name."""
    if args.from_hf:
        return (*from_hf(args.from_hf), "lmref")
    if args.to_hf:
        return (*load_checkpoint(args.to_hf), "hf")
    return (*_preset_source(args), args.format or "lmref")


def _write(config: ModelConfig, params: dict[str, np.ndarray], fmt: str, out: Path) -> str:
    """Write `out` in `fmt` ("lmref" or "hf"); return what was written, for the console."""
    if fmt == "hf":
        to_hf(config, params, out)
        return f"wrote Hugging Face model ({config.hf_model_type}) {out}: {_describe(config, params)}"
    save_checkpoint(out, config, params)
    return f"wrote lmref checkpoint {out}: {_describe(config, params)}"


def run(args: argparse.Namespace) -> int:
    """Do the conversion the options ask for; 1 with a message naming the problem on bad input."""
    try:
        config, params, fmt = _read(args)
        print(_write(config, _cast(params, args.dtype), fmt, Path(args.out)))
    except (ConversionError, CheckpointError, ConfigError, ParamsError) as e:
        print(f"lmref convert: error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    problem = check_options(args)
    if problem:
        print(f"lmref convert: error: {problem}", file=sys.stderr)
        return 2
    return run(args)


def add_commands(sub) -> None:
    """Register `convert` (the lmref checkpoint format: convert/checkpoint.py)."""
    convert = sub.add_parser(
        "convert", help="convert weights: Hugging Face <-> lmref checkpoint, or a preset's initial weights",
        description="One source (--from-hf, --to-hf or --preset) and --out.  An lmref checkpoint is a "
                    "directory with config.json (ModelConfig) and params.safetensors (canonical names).")
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR", help="a Hugging Face model directory (config.json + "
                        "model.safetensors or shards): write an lmref checkpoint to --out")
    source.add_argument("--to-hf", metavar="CKPT", help="an lmref checkpoint: write a Hugging Face model "
                        "directory to --out (config.json + model.safetensors)")
    source.add_argument("--preset", metavar="NAME", help="spec.init_params of tiny(NAME), or of the real "
                        "size with --full")
    convert.add_argument("--out", required=True, help="the directory to write")
    convert.add_argument("--seed", type=int, help="with --preset: the init seed (default 0)")
    convert.add_argument("--full", action="store_true", help="with --preset: the published size, not tiny "
                         "(float64, 8 bytes per parameter)")
    convert.add_argument("--format", choices=("lmref", "hf"), help="with --preset: write an lmref checkpoint "
                         "(default) or a Hugging Face model directory")
    convert.add_argument("--dtype", choices=DTYPES, help="cast the weights written (default: keep their dtype)")
    convert.set_defaults(run=cmd_convert)
