"""`lmref report`: read back what `pytest conformance/ --report-json` wrote.

    lmref report RUN.json            the run's table, counts and failures
    lmref report OLD.json NEW.json   what changed between two runs (exit 1 on a regression)
"""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from lmref.commands.errors import fail
    from lmref.conformance.report_file import ReportFileError, changes, read_report, run_differences, summary_lines

    if len(args.reports) > 2:
        return fail("report", ValueError(f"takes one report or two (OLD NEW), got {len(args.reports)}"))
    try:
        reports = [read_report(path) for path in args.reports]
    except ReportFileError as e:
        return fail("report", e)
    if len(reports) == 1:
        print("\n".join(summary_lines(reports[0])))
        return 0
    old, new = reports
    for difference in run_differences(old, new):
        print(f"note: the runs differ in {difference}")
    found = changes(old, new)
    for change in found:
        print(change.line())
    regressions = [c for c in found if c.kind in ("regressed", "gone")]
    unchanged = len(new["results"]) - sum(c.new is not None for c in found)
    print(f"{len(regressions)} regressed or gone, {sum(c.kind == 'fixed' for c in found)} fixed, "
          f"{sum(c.kind == 'new' for c in found)} new, {unchanged} unchanged")
    return 1 if regressions else 0


def add_commands(sub) -> None:
    """Register `report`."""
    p = sub.add_parser(
        "report", help="summarise a conformance report, or compare two",
        description="With one file written by `pytest conformance/ --report-json`, print its table, counts "
                    "and failures.  With two, OLD then NEW, list every check (arch, case, capability) whose "
                    "status changed: regressed (worse, in the order PASS, SKIPPED, NOT SUPPORTED, FAIL, ERROR), "
                    "gone (in OLD only), fixed, new; exit 1 when one regressed or is gone.  Exit 2 when a file "
                    "is not a report.")
    p.add_argument("reports", nargs="+", metavar="REPORT", help="one report, or OLD and NEW")
    p.set_defaults(run=cmd_report)
