"""The `lmref` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.cli import add_commands as add_export_commands
from spec.presets import PRESETS, resolve_archs
from train.cli import add_commands as add_train_commands


def _archs(value: str | None) -> list[str]:
    return list(PRESETS) if value is None else resolve_archs(value)


def cmd_golden(args: argparse.Namespace) -> int:
    from conformance.generate import check, generate
    from conformance.store import DEFAULT_GOLDEN_DIR

    root = Path(args.out) if args.out else DEFAULT_GOLDEN_DIR
    archs = _archs(args.arch)
    if args.check:
        print(f"regenerating {len(archs)} arch(s) in memory and comparing with {root}")
        problems = check(root, archs)
        for problem in problems:
            print(f"  MISMATCH {problem}")
        print(f"golden store {'OK' if not problems else 'FAILED'}: {len(problems)} problem(s)")
        return 1 if problems else 0
    print(f"writing golden cases for {', '.join(archs)} to {root}")
    files = generate(root, archs)
    size = sum((root / f).stat().st_size for f in files)
    print(f"done: {len(files)} files, {size / 1e6:.2f} MB in the store")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from spec.params import param_count

    print(f"{'preset':<12} {'params':>16}  {'layers':>6} {'d_model':>7} {'heads':>5} {'kv':>3} {'vocab':>7} {'context':>7}  position")
    for name in _archs(args.arch):
        c = PRESETS[name]
        print(f"{name:<12} {param_count(c):>16,}  {c.n_layers:>6} {c.d_model:>7} {c.n_heads:>5} {c.n_kv_heads:>3} "
              f"{c.vocab_size:>7} {c.max_seq_len:>7}  {c.position}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from convert.commands import check_options, run

    problem = check_options(args)
    if problem:
        print(f"lmref convert: error: {problem}", file=sys.stderr)
        return 2
    return run(args)


def _add_convert(sub) -> None:
    """`lmref convert` (convert/commands.py; the lmref checkpoint format: convert/checkpoint.py)."""
    from convert.commands import DTYPES

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmref", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    golden = sub.add_parser("golden", help="write the golden store, or check it against a regeneration")
    golden.add_argument("--arch", help="preset ids, families or patterns, comma-separated (default: all)")
    golden.add_argument("--check", action="store_true", help="regenerate in memory and compare; exit 1 on any mismatch")
    golden.add_argument("--out", help="golden directory (default: the store inside the conformance package)")
    golden.set_defaults(run=cmd_golden)

    presets = sub.add_parser("presets", help="list presets with their parameter counts")
    presets.add_argument("--arch", help="preset ids, families or patterns, comma-separated (default: all)")
    presets.set_defaults(run=cmd_presets)

    _add_convert(sub)
    add_train_commands(sub)  # `lmref train`, `lmref generate` (train/cli.py)
    add_export_commands(sub)  # `lmref export`, `lmref validate-onnx` (export/cli.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyError as e:  # unknown arch: the message lists the known ones
        print(f"lmref: error: {e.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
