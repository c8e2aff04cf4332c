"""What a conformance run found: one record per test, the arch x capability table, the JSON.

A record's status comes from what pytest reported (so the table never disagrees with the
pass / fail counts): a passed call is PASS, a failed call FAIL, a failed setup or teardown
ERROR (the adapter raised, or the golden case could not be loaded), a skip whose reason starts
with "NOT SUPPORTED:" NOT SUPPORTED, any other skip SKIPPED.

Besides the statuses, the table shows for each arch the tightest tolerance row (float64,
float32, float16, bfloat16) that every one of its checks meets ("none" when a check meets no
row, or could not be compared), so a bfloat16 pass never reads as a float32 pass; and a
capture cell says how many of the golden components were compared when not all were.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmref.conformance.adapters import CAPABILITIES
from lmref.conformance.metrics import jsonable
from lmref.conformance.runner import ERROR, FAIL, NOT_SUPPORTED, PASS
from lmref.conformance.tolerances import TIGHTEST_FIRST
from lmref.spec.outputs import CONFORMANCE_REPORT_FORMAT, write_report_file

# The --report-json document's name and version (read back by conformance/report_file.py).
# Version 1: the first with these two keys.
REPORT_FORMAT, REPORT_FORMAT_VERSION = CONFORMANCE_REPORT_FORMAT, 1
SKIPPED = "SKIPPED"
ORDER = (PASS, SKIPPED, NOT_SUPPORTED, FAIL, ERROR)  # best to worst
NOT_SUPPORTED_PREFIX = "NOT SUPPORTED:"
# A golden test puts {"arch", "case", "capability"[, "metrics", "message"]} under this name in
# its user_properties; pytest copies them into every report (pytest-xdist ships them too).
PROPERTY = "lmref"


@dataclass
class Record:
    """One test: (arch, case, capability) and what came of it."""

    nodeid: str
    arch: str
    case: str
    capability: str
    status: str | None = None
    metrics: dict = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict:
        return {"nodeid": self.nodeid, "arch": self.arch, "case": self.case, "capability": self.capability,
                "status": self.status, "metrics": self.metrics, "message": self.message}


def skip_reason(report) -> str:
    """The reason of a skipped pytest report ('' when there is none)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return ""


def is_not_supported(report) -> bool:
    return bool(report.skipped) and skip_reason(report).startswith(NOT_SUPPORTED_PREFIX)


def status_of(report) -> str | None:
    """The status a pytest phase report gives its test; None for a passed setup / teardown."""
    if report.skipped:
        return NOT_SUPPORTED if is_not_supported(report) else SKIPPED
    if report.failed:
        return FAIL if report.when == "call" else ERROR
    return PASS if report.when == "call" else None


def worst(statuses) -> str:
    return max(statuses, key=ORDER.index)


def cell(statuses: list[str]) -> str:
    """An arch's cell: 'PASS 4' when all four agree, else the worst with its count: 'FAIL 1/4';
    '-' when none."""
    if not statuses:
        return "-"
    status = worst(statuses)
    count = statuses.count(status)
    return f"{status} {count}" if count == len(statuses) else f"{status} {count}/{len(statuses)}"


def count_cell(statuses: list[str]) -> str:
    """Every status with its count, best first: 'PASS 20 · NOT SUPPORTED 12'; '-' when none (the
    total row, where one worst status would hide how many passed)."""
    found = Counter(statuses)
    return " · ".join(f"{s} {found[s]}" for s in ORDER if found[s]) or "-"


class Report:
    """Records of a session, keyed by pytest node id, in the order the tests ran."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}

    def add_phase(self, report) -> None:
        """Fold one pytest phase report (setup / call / teardown) of a golden test into its record."""
        info = dict(report.user_properties).get(PROPERTY)
        status = status_of(report)
        if info is None or status is None:
            return
        record = self.records.setdefault(
            report.nodeid, Record(report.nodeid, info["arch"], info["case"], info["capability"])
        )
        record.status = status if record.status is None else worst([record.status, status])
        record.metrics = info.get("metrics", record.metrics)
        if not record.message:  # a PASS may have one too: "PASS (5 of 9 components)"
            fallback = "" if status == PASS else skip_reason(report) if report.skipped else report.longreprtext
            record.message = info.get("message") or fallback

    def finished(self) -> list[Record]:
        return [r for r in self.records.values() if r.status is not None]

    def grid(self) -> dict[str, dict[str, list[str]]]:
        """{arch: {capability: [status, ...]}} over the finished records."""
        grid: dict[str, dict[str, list[str]]] = {}
        for r in self.finished():
            grid.setdefault(r.arch, {c: [] for c in CAPABILITIES})[r.capability].append(r.status)
        return grid

    def tightest_rows(self) -> dict[str, str]:
        """{arch: the tightest row every compared check of the arch meets}: "none" when one meets
        no row or could not be compared (an ERROR, an invalid result), "-" when nothing was
        compared (every check NOT SUPPORTED or skipped).  A passed routing check has no row: it
        is exact (the same experts or not), so it neither lowers nor raises the arch's row."""
        found: dict[str, list] = {}
        for r in self.finished():
            rows = found.setdefault(r.arch, [])
            if r.capability == "routing" and r.status == PASS:
                continue
            if r.status in (PASS, FAIL, ERROR):
                rows.append(r.metrics.get("tightest_row"))
        table = {}
        for arch, rows in found.items():
            if not rows:
                table[arch] = "-"
            elif None in rows or any(row not in TIGHTEST_FIRST for row in rows):
                table[arch] = "none"
            else:
                table[arch] = max(rows, key=TIGHTEST_FIRST.index)
        return table

    def components_note(self, arch: str) -> str:
        """' (5 of 9 components)' when an arch's capture checks compared fewer than all the golden
        components (the fewest over its checks), with ', 4 unknown names' when they captured
        names the golden has not (the most over its checks), else ''."""
        checks = [r.metrics for r in self.finished()
                  if r.arch == arch and r.capability == "capture" and "components_compared" in r.metrics]
        if not checks:
            return ""
        compared, expected = min((m["components_compared"], m["components_expected"]) for m in checks)
        unknown = max(len(m.get("unknown", [])) for m in checks)
        notes = ([f"{compared} of {expected} components"] if compared != expected else []) + (
            [f"{unknown} unknown name{'s' if unknown > 1 else ''}"] if unknown else [])
        return f" ({', '.join(notes)})" if notes else ""

    def compared_nothing(self) -> bool:
        """Whether checks finished and not one compared anything (each NOT SUPPORTED or skipped)."""
        counts = self.counts()
        return bool(self.finished()) and not any(counts[s] for s in (PASS, FAIL, ERROR))

    def counts(self) -> dict[str, int]:
        found = Counter(r.status for r in self.finished())
        return {s: found[s] for s in ORDER if found[s] or s != SKIPPED}

    def _cell(self, arch: str, capability: str, statuses: list[str]) -> str:
        note = self.components_note(arch) if capability == "capture" and statuses else ""
        return cell(statuses) + note

    def columns(self) -> list[str]:
        """The capabilities of the table: all, but routing only when a selected arch has a
        mixture of experts (a dense model has nothing to route)."""
        return [c for c in CAPABILITIES
                if c != "routing" or any(r.capability == "routing" for r in self.finished())]

    def table_lines(self) -> list[str]:
        """The arch x capability table with each arch's tightest row met, a total row and a count line."""
        grid = self.grid()
        tightest = self.tightest_rows()
        shown = self.columns()
        rows = [["arch", *shown, "tightest row"]]
        rows += [[arch, *(self._cell(arch, c, caps[c]) for c in shown), tightest[arch]]
                 for arch, caps in grid.items()]
        totals = [sum((caps[c] for caps in grid.values()), []) for c in shown]
        overall = "-" if not tightest else "none" if "none" in tightest.values() else max(
            (t for t in tightest.values() if t != "-"), key=TIGHTEST_FIRST.index, default="-")
        rows.append(["total", *(count_cell(t) for t in totals), overall])
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(text.ljust(w) for text, w in zip(row, widths)).rstrip() for row in rows]
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items())
        return lines + [f"{len(self.finished())} checks: {counts}"]

    def to_json(self, run: dict, exit_status: int) -> dict:
        """The --report-json document: `run` (impl, versions, archs, ...), results, summary."""
        table = {arch: {c: self._cell(arch, c, s) for c, s in caps.items()} for arch, caps in self.grid().items()}
        summary = {"total": len(self.finished()), "counts": self.counts(), "table": table,
                   "tightest_row": self.tightest_rows(), "exit_status": int(exit_status)}
        return {"format": REPORT_FORMAT, "format_version": REPORT_FORMAT_VERSION, **run,
                "results": [r.to_dict() for r in self.finished()], "summary": summary}

    def write_json(self, path: Path, run: dict, exit_status: int) -> None:
        # strict JSON: an override of inf (a gate switched off) is written "inf", as the metrics are
        write_report_file(path, json.dumps(jsonable(self.to_json(run, exit_status)), indent=1, allow_nan=False) + "\n")
