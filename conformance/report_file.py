"""Reading `--report-json` files back: the summary of one run and what changed between two
(`lmref report FILE` and `lmref report OLD NEW`, lmref/commands/report.py).

A report is the object conformance/report.py `Report.to_json` writes: `format`
("lmref-conformance-report"), `format_version`, the run (`impl`, `impl_version`, `dtype`,
`golden_version`, ...), `results` (one per check: `nodeid`, `arch`, `case`, `capability`,
`status`, `metrics`, `message`) and `summary` (`total`, `counts`, `table`, `tightest_row`,
`exit_status`); docs/conformance.md, "Reports".  Files written before the format was named
(version 0) carry the same keys without `format`, and are read alike.

Two runs are compared check by check, a check being (arch, case, capability).  A status worse
than before (the order PASS, SKIPPED, NOT SUPPORTED, FAIL, ERROR) is a regression, and so is a
check the new run no longer has; a better one is a fix; a check only the new run has is new.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmref.conformance.adapters import CAPABILITIES
from lmref.conformance.report import ORDER, REPORT_FORMAT, REPORT_FORMAT_VERSION, cell, count_cell

RESULT_KEYS = ("arch", "case", "capability", "status")
UNFINISHED = {  # pytest's exit statuses that a table of finished checks does not show
    2: "it was interrupted, and the checks it did not reach are not in the report",
    3: "it ended in an internal error (of pytest, a plugin, or the report's write)",
    5: "nothing was compared (every check NOT SUPPORTED or skipped)",
}


class ReportFileError(ValueError):
    """A file that is not a conformance report this version of lmref reads."""


def read_report(path: str | Path) -> dict:
    """The report in `path`; ReportFileError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ReportFileError(f"{path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # RecursionError: nested past the stack
        raise ReportFileError(f"{path}: is not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list) or "summary" not in data:
        raise ReportFileError(f"{path}: is not a conformance report (no results and summary: write one with "
                              "`pytest conformance/ --report-json PATH`)")
    version = data.get("format_version", 0) if data.get("format", REPORT_FORMAT) == REPORT_FORMAT else None
    if not isinstance(version, int) or not 0 <= version <= REPORT_FORMAT_VERSION:
        raise ReportFileError(f"{path}: format {data.get('format')!r} version {data.get('format_version')!r}; this "
                              f"lmref reads {REPORT_FORMAT!r} versions 0 to {REPORT_FORMAT_VERSION}")
    for i, result in enumerate(data["results"]):
        missing = [k for k in RESULT_KEYS if not isinstance(result, dict) or not isinstance(result.get(k), str)]
        if missing:
            raise ReportFileError(f"{path}: results[{i}] lacks {', '.join(missing)}")
        if result["status"] not in ORDER:
            raise ReportFileError(f"{path}: results[{i}] has status {result['status']!r}, not one of "
                                  f"{', '.join(ORDER)}")
    _check_summary(path, data)
    return data


def _check_summary(path: Path, data: dict) -> None:
    """ReportFileError unless the results name each check once and the summary is what they give
    (its counts, total and table): a file edited by hand, or two runs pasted together, is
    refused rather than shown or compared as a run."""
    seen = set()
    for result in data["results"]:
        check = (result["arch"], result["case"], result["capability"])
        if check in seen:
            raise ReportFileError(f"{path}: results hold {check[0]}/{check[1]} {check[2]} more than once")
        seen.add(check)
    summary = data["summary"]
    if not isinstance(summary, dict) or not all(isinstance(summary.get(k, {}), dict) for k in (
            "counts", "table", "tightest_row")) or not isinstance(data.get("case_tolerance_overrides") or {}, dict):
        raise ReportFileError(f"{path}: summary must be an object whose counts, table and tightest_row are objects "
                              "(and case_tolerance_overrides an object)")
    statuses = [r["status"] for r in data["results"]]
    counted = {s: n for s, n in summary.get("counts", {}).items() if n}
    if counted != {s: n for s, n in Counter(statuses).items()} or summary.get("total", len(statuses)) != len(statuses):
        raise ReportFileError(f"{path}: summary counts {summary.get('counts')} (total {summary.get('total')}) are not "
                              f"those of its {len(statuses)} results ({count_cell(statuses)})")
    grid: dict[tuple[str, str], list[str]] = {}
    for r in data["results"]:
        grid.setdefault((r["arch"], r["capability"]), []).append(r["status"])
    for arch, caps in summary.get("table", {}).items():
        for capability, shown in (caps.items() if isinstance(caps, dict) else [(None, caps)]):
            if not isinstance(shown, str) or not shown.startswith(cell(grid.get((arch, capability), []))):
                raise ReportFileError(f"{path}: summary table {arch} {capability}: {shown!r}, but its results give "
                                      f"{cell(grid.get((arch, capability), []))!r}")


def summary_lines(report: dict) -> list[str]:
    """The run, the arch x capability table with each arch's tightest row, the counts, and one
    line per FAIL or ERROR with the first line of its message."""
    summary = report["summary"]
    table, tightest = summary.get("table", {}), summary.get("tightest_row", {})
    shown = [c for c in CAPABILITIES if any(caps.get(c, "-") != "-" for caps in table.values())]
    rows = [["arch", *shown, "tightest row"]]
    rows += [[arch, *(caps.get(c, "-") for c in shown), tightest.get(arch, "-")] for arch, caps in table.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    golden = f"golden {report.get('golden_version', '?')}"
    if report.get("golden_store") == "custom":  # its cases may loosen their rows: shown, as in the suite's header
        golden = f"custom golden store {report.get('golden_dir', '?')} (manifest {report.get('golden_version', '?')})"
    loosened = report.get("tolerance_overrides")
    lines = [f"{report.get('impl', '?')} ({report.get('impl_version', '?')}), {report.get('dtype', '?')} row, {golden}"
             + (f"; run overrides: {json.dumps(loosened)}" if loosened else "")]
    lines += [f"case tolerance overrides: {case} {json.dumps(rows)}"
              for case, rows in (report.get("case_tolerance_overrides") or {}).items()]
    lines += ["  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip() for row in rows]
    counts = ", ".join(f"{n} {s}" for s, n in summary.get("counts", {}).items())
    lines.append(f"{summary.get('total', len(report['results']))} checks: {counts}")
    status = summary.get("exit_status")
    if status in UNFINISHED:
        lines.append(f"the run exited with status {status}: {UNFINISHED[status]}")
    for r in report["results"]:
        if r["status"] in ("FAIL", "ERROR"):
            lines.append(f"{r['status']} {r['arch']}/{r['case']} {r['capability']}: {gist(r.get('message') or '')}")
    return lines


HEADING_CAUSE = re.compile(r"(?:FAIL|ERROR) \S+ \w+: (?P<cause>.+)")  # "ERROR arch/case capability: cause"


def gist(message: str) -> str:
    """The line of a FAIL or ERROR message that says most: the first diverging component,
    else the first reason given (under "failed:", or in the heading itself: an ERROR's, an
    invalid result's), else the first line after the heading."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("first diverging component"):
            return line
    if "failed:" in lines[:-1]:
        return lines[lines.index("failed:") + 1]
    cause = HEADING_CAUSE.fullmatch(lines[0]) if lines else None
    if cause:
        return cause["cause"]
    return lines[1] if len(lines) > 1 else "".join(lines)


@dataclass(frozen=True)
class Change:
    check: tuple[str, str, str]  # (arch, case, capability)
    old: str | None  # None: the old run did not have the check
    new: str | None  # None: the new run does not

    @property
    def kind(self) -> str:
        if self.new is None:
            return "gone"
        if self.old is None:
            return "new"
        return "regressed" if ORDER.index(self.new) > ORDER.index(self.old) else "fixed"

    def line(self) -> str:
        arch, case, capability = self.check
        return f"{self.kind:9} {arch}/{case} {capability}: {self.old or '(none)'} -> {self.new or '(none)'}"


def _statuses(report: dict) -> dict[tuple[str, str, str], str]:
    return {(r["arch"], r["case"], r["capability"]): r["status"] for r in report["results"]}


def changes(old: dict, new: dict) -> list[Change]:
    """Every check whose status differs between the two runs, in the new run's order, then
    the checks the new run lost."""
    before, after = _statuses(old), _statuses(new)
    found = [Change(k, before.get(k), s) for k, s in after.items() if before.get(k) != s]
    return found + [Change(k, s, None) for k, s in before.items() if k not in after]


def run_differences(old: dict, new: dict) -> list[str]:
    """What makes two runs not like for like: another golden set (or store, or case overrides), dtype row,
    implementation or run overrides (--tolerance, --tolerances)."""
    keys = ("impl", "dtype", "golden_version", "golden_store", "case_tolerance_overrides", "tolerance_overrides")
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key)]
