"""`lmref check`: judge logits files that any program wrote against the golden cases of one arch.

    lmref check --arch llama3 --logits DIR [--dtype float32] [--golden-dir G] [--tolerance D.M=V]

One line per case: its verdict (the suite's PASS / FAIL / NOT SUPPORTED), the tolerance row it
was judged by and the tightest row it meets; a FAIL prints the suite's message.  Exit 1 on any
FAIL, 2 on bad input (a file of the wrong shape, no file at all, an unknown arch), else 0.
File names and shapes: conformance/logits_files.py, docs/engines.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from lmref.conformance.tolerances import DTYPES


def _repro(args: argparse.Namespace) -> str:
    parts = ["lmref", "check", "--arch", args.arch, "--logits", args.logits]
    parts += ["--dtype", args.dtype] if args.dtype else []
    parts += ["--golden-dir", args.golden_dir] if args.golden_dir else []
    for flag, values in (("--tolerances", args.tolerances), ("--tolerance", args.tolerance)):
        parts += [x for value in values for x in (flag, value)]
    return shlex.join(parts)


def _line(verdict) -> str:
    metrics = verdict.result.metrics
    row = f"  (row {metrics['dtype']}, tightest row met: {metrics['tightest_row'] or 'none'})" if metrics else ""
    return f"{verdict.result.status:<13} {verdict.case} {verdict.capability}{row}"


def cmd_check(args: argparse.Namespace) -> int:
    from lmref.commands.errors import fail
    from lmref.conformance.logits_files import LogitsFileError, check_directory, failed, unread_files
    from lmref.conformance.report import count_cell
    from lmref.conformance.runner import FAIL, NOT_SUPPORTED
    from lmref.conformance.store import GoldenStoreError, open_checked
    from lmref.conformance.tolerances import ToleranceError, build_tolerances

    try:
        store, custom = open_checked(args.golden_dir)
        tolerances = build_tolerances(args.tolerances, args.tolerance)
        verdicts = check_directory(args.arch, args.logits, args.dtype, store, tolerances, repro=_repro(args))
        overrides = {case: store.load_meta(args.arch, case).get("tolerances") for case in store.case_names(args.arch)}
    except (LogitsFileError, GoldenStoreError, ToleranceError, KeyError) as e:
        return fail("check", e if not isinstance(e, KeyError) else ValueError(e.args[0]))
    row = args.dtype or "float32 (the default; --dtype declares the row)"
    golden = f"custom golden store {store.root} (manifest {store.version})" if custom else f"golden {store.version}"
    loosened_by_run = f"; run overrides: {json.dumps(tolerances.run_overrides)}" if tolerances.run_overrides else ""
    print(f"lmref check: {args.arch}, logits from {args.logits}, {golden}, tolerance row {row}{loosened_by_run}")
    for case, loosened in overrides.items():  # a custom store's case may loosen a row: said before any PASS
        if loosened:
            print(f"note: {args.arch}/{case}'s case.json overrides tolerances: {json.dumps(loosened)}")
    for verdict in verdicts:
        print(_line(verdict))
        if verdict.result.status in (FAIL, NOT_SUPPORTED) and verdict.result.message:
            print("    " + verdict.result.message.replace("\n", "\n    "))
    for note in unread_files(Path(args.logits), args.arch, store.case_names(args.arch)):
        print(f"note: {note}")
    print(f"{len(verdicts)} cases: {count_cell([v.result.status for v in verdicts])}")
    return 1 if failed(verdicts) else 0


def add_commands(sub) -> None:
    """Register `check`."""
    p = sub.add_parser(
        "check", help="judge logits files written by any program against one arch's golden cases",
        description="Reads DIR/<case>.npy or DIR/<case>.safetensors (one tensor 'logits'), float "
                    "[batch, seq, vocab], one per golden case of --arch (`lmref golden export` writes the "
                    "inputs), and gives the conformance suite's verdicts and messages.  A case without a file is "
                    "NOT SUPPORTED.  Exit 1 on any FAIL, 2 on bad input.")
    p.add_argument("--arch", required=True, help="one preset id (its golden cases)")
    p.add_argument("--logits", required=True, metavar="DIR", help="the folder of logits files")
    p.add_argument("--dtype", choices=DTYPES, help="the tolerance row the program claims (default: float32)")
    p.add_argument("--golden-dir", help="a golden store (default: the one inside the conformance package)")
    p.add_argument("--tolerances", action="append", default=[], metavar="FILE.json",
                   help="tolerance overrides {dtype: {metric: value}}, as the suite's --tolerances")
    p.add_argument("--tolerance", action="append", default=[], metavar="DTYPE.METRIC=VALUE",
                   help="one tolerance override, as the suite's --tolerance (repeatable)")
    p.set_defaults(run=cmd_check)
