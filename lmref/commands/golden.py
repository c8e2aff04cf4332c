"""`lmref golden` and `lmref presets`: the golden store and the preset table."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from lmref.spec.presets import PRESETS, preset_info, resolve_archs


def _archs(value: str | None) -> list[str]:
    return list(PRESETS) if value is None else resolve_archs(value)


def cmd_golden(args: argparse.Namespace) -> int:
    from lmref.commands.errors import fail
    from lmref.conformance.generate import check, generate
    from lmref.conformance.store import DEFAULT_GOLDEN_DIR, GoldenStoreError
    from lmref.spec.errors import OutputError

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
    try:
        files = generate(root, archs)
    except (OutputError, GoldenStoreError, OSError) as e:  # not its directory, an unreadable manifest, no permission
        return fail("golden", e)
    size = sum((root / f).stat().st_size for f in files)
    print(f"done: {len(files)} files, {size / 1e6:.2f} MB in the store")
    return 0


_SOURCE_WIDTH = 100
_PRESET_ROW = "{:<{name}} {:<{family}} {:<10} {:>16}  {:>6} {:>7} {:>5} {:>3} {:>7} {:>7}  {}"


def cmd_presets(args: argparse.Namespace) -> int:
    """One row per preset (its family, its transformers model_type or "-" when transformers has
    no class for it, its sizes), then its source (the paper or published config) indented below."""
    from lmref.spec.params import param_count

    names = _archs(args.arch)
    width = dict(name=max(map(len, ["preset", *names])),
                 family=max(map(len, ["family", *(preset_info(n).family for n in names)])))
    print(_PRESET_ROW.format("preset", "family", "model_type", "params", "layers", "d_model", "heads", "kv", "vocab",
                             "context", "position", **width))
    for name in names:
        preset = preset_info(name)
        c = preset.config
        print(_PRESET_ROW.format(name, preset.family, c.hf_model_type or "-", f"{param_count(c):,}", c.n_layers,
                                 c.d_model, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len, c.position,
                                 **width))
        print(textwrap.fill(preset.source, _SOURCE_WIDTH, initial_indent="    source: ", subsequent_indent=" " * 12,
                            break_on_hyphens=False))  # a name such as llama-models stays whole
    return 0


def add_commands(sub) -> None:
    """Register `golden` and `presets` on lmref's subparsers."""
    golden = sub.add_parser("golden", help="write the golden store, or check it against a regeneration")
    golden.add_argument("--arch", help="preset ids, families or patterns, comma-separated (default: all)")
    golden.add_argument("--check", action="store_true", help="regenerate in memory and compare; exit 1 on any mismatch")
    golden.add_argument("--out", help="golden directory (default: the store inside the conformance package); "
                        "taken only when new, empty or a golden store lmref wrote; rewriting an arch deletes only "
                        "the files its MANIFEST.json lists")
    golden.set_defaults(run=cmd_golden)

    presets = sub.add_parser("presets", help="list presets: family, transformers model_type, parameter count, "
                             "sizes and the source of their numbers")
    presets.add_argument("--arch", help="preset ids, families or patterns, comma-separated (default: all)")
    presets.set_defaults(run=cmd_presets)
