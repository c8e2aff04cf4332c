"""`lmref golden` and `lmref presets`: the golden store and the preset table.

    lmref golden [--arch A] [--out DIR] [--check]      write the store, or check it
    lmref golden export --arch A --format gguf|hf|safetensors --out DIR
                                                      one arch's cases as files for other engines
                                                      (conformance/golden_export.py)
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from lmref.conformance.golden_export import FORMATS
from lmref.spec.presets import PRESETS, preset_info, resolve_archs


def _archs(value: str | None) -> list[str]:
    return list(PRESETS) if value is None else resolve_archs(value)


def _export_problem(args: argparse.Namespace) -> str | None:
    """A usage problem with the options of `golden` or `golden export` (None when they fit)."""
    if args.action != "export":
        used = [flag for flag, value in (("--format", args.format), ("--golden-dir", args.golden_dir)) if value]
        return f"{', '.join(used)}: only with `lmref golden export`" if used else None
    missing = [flag for flag, value in (("--arch", args.arch), ("--format", args.format), ("--out", args.out))
               if not value]
    if missing:
        return f"needs {', '.join(missing)}"
    if args.check:
        return "--check: not with `lmref golden export`"
    return None


def cmd_export(args: argparse.Namespace) -> int:
    from lmref.commands.errors import fail, known_errors
    from lmref.conformance.golden_export import export_golden
    from lmref.conformance.store import GoldenStoreError, open_checked

    archs = resolve_archs(args.arch)
    if len(archs) != 1:
        return fail("golden export", ValueError(f"--arch {args.arch}: names {len(archs)} archs; export one at a time"))
    try:
        store, _ = open_checked(args.golden_dir)  # the release set, or a custom store without strays, as `check`
        names = export_golden(archs[0], args.format, Path(args.out), store)
    except (*known_errors(), GoldenStoreError, OSError) as e:
        return fail("golden export", e)
    print(f"wrote {len(names)} {archs[0]} case(s) as {args.format} to {args.out}: {', '.join(names)} "
          f"(what each file is: {Path(args.out) / 'manifest.json'})")
    return 0


def cmd_golden(args: argparse.Namespace) -> int:
    from lmref.commands.errors import fail

    problem = _export_problem(args)
    if problem:
        return fail("golden export" if args.action == "export" else "golden", ValueError(problem))
    if args.action == "export":
        return cmd_export(args)
    from lmref.conformance.generate import check, generate
    from lmref.conformance.store import DEFAULT_GOLDEN_DIR, KIND, MANIFEST, GoldenStoreError
    from lmref.spec.errors import OutputError
    from lmref.spec.outputs import check_output

    root = Path(args.out) if args.out else DEFAULT_GOLDEN_DIR
    archs = _archs(args.arch)
    if args.check and not (root / MANIFEST).is_file():  # nothing to compare: bad input, not a mismatch
        what = "does not exist" if not root.exists() else "is not a directory" if not root.is_dir() else \
            f"holds no {MANIFEST}"
        return fail("golden", ValueError(f"--out {root}: {what}, so there is no golden store to check "
                                         "(`lmref golden --out DIR` writes one)"))
    if args.check:
        print(f"regenerating {len(archs)} arch(s) in memory and comparing with {root}")
        problems = check(root, archs)
        for problem in problems:
            print(f"  MISMATCH {problem}")
        print(f"golden store {'OK' if not problems else 'FAILED'}: {len(problems)} problem(s)")
        return 1 if problems else 0
    try:
        check_output(root, KIND)  # before saying what it writes (generate claims it again)
        print(f"writing golden cases for {', '.join(archs)} to {root}")
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
    golden = sub.add_parser("golden", help="write the golden store, check it against a regeneration, or export "
                            "one arch's cases as files (`golden export`)")
    golden.add_argument("action", nargs="?", choices=("export",), help="export: write --arch's cases to --out in "
                        "--format, for engines outside Python (docs/engines.md)")
    golden.add_argument("--arch", help="preset ids, families or patterns, comma-separated (default: all)")
    golden.add_argument("--check", action="store_true", help="regenerate in memory and compare; exit 1 on any mismatch")
    golden.add_argument("--out", help="golden directory (default: the store inside the conformance package); "
                        "taken only when new, empty or a golden store lmref wrote; rewriting an arch deletes only "
                        "the files its MANIFEST.json lists.  With export: a new or empty directory (never "
                        "overwritten)")
    golden.add_argument("--format", choices=FORMATS, help="with export: the weights' format (gguf: float32 for "
                        "llama.cpp; hf: a Hugging Face directory; safetensors: lmref's canonical names)")
    golden.add_argument("--golden-dir", help="with export: the golden store to read (default: the package's)")
    golden.set_defaults(run=cmd_golden)

    presets = sub.add_parser("presets", help="list presets: family, transformers model_type, parameter count, "
                             "sizes and the source of their numbers")
    presets.add_argument("--arch", help="preset ids, families or patterns, comma-separated (default: all)")
    presets.set_defaults(run=cmd_presets)
