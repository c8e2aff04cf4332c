"""`lmref convert`: the command-line face of the converters.

    lmref convert --from-hf DIR --out CKPT          HF model directory -> lmref checkpoint
    lmref convert --to-hf CKPT --out DIR            lmref checkpoint -> HF model directory
    lmref convert --preset NAME [--seed S] [--full] [--format lmref|hf] --out OUT
                                                    spec.init_params of a preset -> OUT

A preset source is `tiny(NAME)` (2 layers, head_dim 16, vocab 251: the golden's size) unless
`--full` asks for the published size, which allocates every parameter in float64 (8 bytes
each: 53 GB for mpt; meant for small presets such as gpt2).  The bytes are estimated first and
a source that cannot fit in the memory available is refused with the estimate, unless
`--force-memory` (spec/resources.py).  `--dtype` casts the weights written (default: keep
them, float64 for a preset).

`--out` is checked before anything is read (convert/outputs.py): never the source itself, inside
it or holding it; a new or empty directory, or one this command wrote before as the same kind
(an lmref checkpoint, a Hugging Face model).  A refusal exits 2 and leaves every file as it was.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lmref.commands.errors import fail, known_errors
from lmref.convert.checkpoint import load_checkpoint, save_checkpoint, written_by_training
from lmref.convert.hf import from_hf, to_hf
from lmref.convert.outputs import CHECKPOINT_KIND, HF_KIND, check_output
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params, param_count
from lmref.spec.presets import get_preset, tiny
from lmref.spec.resources import check_allocation

DTYPES = ("float64", "float32", "float16")
FORCE_MEMORY = "--force-memory"  # the same flag on `lmref train`


def _describe(config: ModelConfig, params: dict[str, np.ndarray]) -> str:
    dtypes = ", ".join(sorted({v.dtype.name for v in params.values()}))
    return f"{config.name}: {param_count(config):,} parameters, {dtypes}"


def _cast(params: dict[str, np.ndarray], dtype: str | None) -> dict[str, np.ndarray]:
    """`--dtype`: a weight the dtype cannot hold (it would become inf) is refused by name."""
    from lmref.convert.dtypes import cast_weights

    return cast_weights(params, dtype)


def preset_bytes(config: ModelConfig, dtype: str | None) -> int:
    """About the most memory a preset conversion holds at once: the float64 parameters of
    init_params, and two copies of what is written (the cast, or the transposed Hugging Face
    tensors, and the contiguous copy safetensors writes)."""
    written = np.dtype(dtype or "float64").itemsize
    return param_count(config) * (8 + 2 * written)


def _preset_source(args: argparse.Namespace) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    config = get_preset(args.preset) if args.full else tiny(args.preset)
    size = "--full " if args.full else ""
    check_allocation(preset_bytes(config, args.dtype),
                     f"--preset {args.preset} {size}({param_count(config):,} float64 parameters)",
                     force=args.force_memory, hint=f"pass {FORCE_MEMORY} to allocate anyway")
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
        if args.force_memory:
            return f"{FORCE_MEMORY}: only with --preset (it allocates the parameters it writes)"
    elif args.seed is not None and args.seed < 0:
        return f"--seed must be a non-negative integer, got {args.seed}"
    return None


def _output_kind(args: argparse.Namespace) -> str:
    return HF_KIND if args.to_hf or (args.preset and args.format == "hf") else CHECKPOINT_KIND


def _read(args: argparse.Namespace) -> tuple[ModelConfig, dict[str, np.ndarray], str]:
    """(config, params, the format to write) of the source the options name."""
    if args.from_hf:
        return (*from_hf(args.from_hf), "lmref")
    if args.to_hf:
        return (*_lmref_checkpoint(Path(args.to_hf)), "hf")
    return (*_preset_source(args), args.format or "lmref")


def _lmref_checkpoint(path: Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """An lmref checkpoint; an `lmref train` step directory, or a run directory for the step its
    `latest` names, read as `lmref export --checkpoint` reads it: every file checked against the
    trainer state's sha256 first."""
    if not written_by_training(path):
        return load_checkpoint(path)
    from lmref.train.checkpoint import load_model

    _, config, params, _ = load_model(path)
    return config, params


def _write(config: ModelConfig, params: dict[str, np.ndarray], fmt: str, out: Path) -> str:
    """Write `out` in `fmt` ("lmref" or "hf"); return what was written, for the console."""
    if fmt == "hf":
        to_hf(config, params, out, option="--out")
        return f"wrote Hugging Face model ({config.hf_model_type}) {out}: {_describe(config, params)}"
    save_checkpoint(out, config, params, option="--out")
    return f"wrote lmref checkpoint {out}: {_describe(config, params)}"


def run(args: argparse.Namespace) -> int:
    """Do the conversion the options ask for: on bad input a message naming the problem and exit
    status 2, as every command; 1 when the conversion itself failed (out of memory)."""
    try:
        check_output(args.out, _output_kind(args), inputs=[args.from_hf, args.to_hf])  # before reading
        config, params, fmt = _read(args)
        print(_write(config, _cast(params, args.dtype), fmt, Path(args.out)))
    except known_errors() as e:
        return fail("convert", e)
    except MemoryError:
        return fail("convert", MemoryError("out of memory while converting (more than lmref's estimate, or "
                                           f"{FORCE_MEMORY} was given)"), status=1)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    problem = check_options(args)
    if problem:
        return fail("convert", ValueError(problem))
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
    convert.add_argument("--out", required=True, help="the directory to write: new, empty, or one this "
                         "command wrote before as the same kind; never the source")
    convert.add_argument("--seed", type=int, help="with --preset: the init seed (default 0)")
    convert.add_argument("--full", action="store_true", help="with --preset: the published size, not tiny "
                         "(float64, 8 bytes per parameter)")
    convert.add_argument("--format", choices=("lmref", "hf"), help="with --preset: write an lmref checkpoint "
                         "(default) or a Hugging Face model directory")
    convert.add_argument("--dtype", choices=DTYPES, help="cast the weights written (default: keep their dtype)")
    convert.add_argument(FORCE_MEMORY, action="store_true", help="with --preset: allocate even when the "
                         "estimated bytes exceed the memory available (refused by default, with the estimate)")
    convert.set_defaults(run=cmd_convert)
