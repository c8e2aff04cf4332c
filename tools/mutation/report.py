"""The mutation table and score, from a results JSON (tools/mutation/run.py writes it), into
docs/mutation.md between its markers.

A result: {"id", "backend", "bug", "equivalent", "reason", "property": suite, "conformance": suite},
a suite {"killed": bool, "test": first failing test id or null, "seconds": float}.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- mutation:begin -->", "<!-- mutation:end -->"
DOCS = Path("docs/mutation.md")


def _cell(suite: dict) -> str:
    """'killed by `test` / 12.3 s' or 'survived / 40.1 s'."""
    what = f"`{suite['test']}`" if suite["killed"] else "**survived**"
    return f"{what} / {suite['seconds']:.1f} s"


def table(results: list[dict]) -> str:
    rows = ["| mutant | backend | bug | property: killed by / s | conformance: killed by / s |",
            "|---|---|---|---|---|"]
    for r in results:
        bug = r["bug"] + (" *(equivalent)*" if r.get("equivalent") else "")
        rows.append(f"| `{r['id']}` | {r['backend']} | {bug} | {_cell(r['property'])} | {_cell(r['conformance'])} |")
    return "\n".join(rows)


def score(results: list[dict]) -> str:
    """'N of M non-equivalent mutants killed by both suites; property K1, conformance K2'."""
    live = [r for r in results if not r.get("equivalent")]
    prop = sum(r["property"]["killed"] for r in live)
    conf = sum(r["conformance"]["killed"] for r in live)
    both = sum(r["property"]["killed"] and r["conformance"]["killed"] for r in live)
    return (f"**{both} of {len(live)} non-equivalent mutants killed by both suites; property {prop}, "
            f"conformance {conf}** ({len(results) - len(live)} declared equivalent).")


def survivors(results: list[dict]) -> str:
    """A line per mutant a suite missed (with its known reason), and per equivalent one that was killed."""
    lines = []
    for r in results:
        missed = [s for s in ("property", "conformance") if not r[s]["killed"]]
        if r.get("equivalent"):
            killers = [s for s in ("property", "conformance") if r[s]["killed"]]
            if killers:
                lines.append(f"- `{r['id']}`: declared equivalent ({r['equivalent']}) but killed by "
                             f"{' and '.join(killers)}: the declaration is wrong")
            continue
        if missed:
            why = r.get("reason") or "no reason recorded yet: investigate"
            lines.append(f"- `{r['id']}`: missed by {' and '.join(missed)}. {why}")
    return "\n".join(lines) or "None: every non-equivalent mutant was killed by both suites."


def equivalents(results: list[dict]) -> str:
    lines = [f"- `{r['id']}`: {r['equivalent']}" for r in results if r.get("equivalent")]
    return "\n".join(lines) or "None."


def render(run: dict) -> str:
    """The markdown that goes between the markers."""
    results = run["results"]
    return "\n\n".join([
        f"Last run: {run['date']}, {len(results)} mutants, --jobs {run['jobs']}, {run['seconds'] / 60:.1f} min "
        f"(baseline {run['baseline_seconds']:.0f} s).",
        score(results), table(results), "Survivors:\n\n" + survivors(results),
        "Equivalent mutants:\n\n" + equivalents(results)])


def write_docs(run: dict, docs: Path = DOCS) -> None:
    """Replace the text between the markers of `docs` by the rendered run."""
    text = docs.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{docs} has no {BEGIN} ... {END} section to write the table into")
    docs.write_text(text[: start + len(BEGIN)] + "\n" + render(run) + "\n" + text[end:])


def load(path: Path) -> dict:
    run = json.loads(Path(path).read_text())
    missing = [k for k in ("date", "jobs", "seconds", "baseline_seconds", "results") if k not in run]
    if missing:
        raise ValueError(f"{path} is not a mutation results file: missing {', '.join(missing)}")
    return run
