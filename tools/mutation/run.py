"""Run the mutants (docs/mutation.md):

    python -m tools.mutation.run [--only ID ...] [--jobs N] [--out DIR] [--timeout S]
    python -m tools.mutation.run --render RESULTS.json

Each mutant is applied in its own sandbox (sandbox.py) and run through (a) the property tests, its
own files first then the rest of its backend's (tests/torch or tests/jax), and (b) the conformance
suite for each of its impls on its archs, every pytest with -x (a killed mutant stops at its first
failure) and one thread.  A baseline of the same commands on the unmutated copy runs first and
must pass.  Results go to DIR/results.json (default build/mutation); a full run (no --only)
rewrites the table in docs/mutation.md, --render rewrites it from a saved results file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tools.mutation import report
from tools.mutation.mutants import Mutant, by_id
from tools.mutation.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[2]
PYTEST = ["-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", "-rfE"]
PROFILE = "--hypothesis-profile=ci"  # tests/conftest.py: derandomized, so a run is repeatable
MARKER = ".lmref-mutation"  # marks an --out directory as this tool's
FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.MULTILINE)


def property_files(mutant: Mutant, root: Path) -> list[str]:
    """The mutant's own test files, then (unless it is declared equivalent: a full suite would only
    confirm that it survives) every other test file of its backend's folder."""
    own = list(mutant.tests)
    if mutant.equivalent:
        return own
    rest = sorted(str(p.relative_to(root)) for p in (root / "tests" / mutant.backend).glob("test_*.py"))
    return own + [f for f in rest if f not in own]


def run_pytest(python: str, args: list[str], cwd: Path, timeout: float) -> dict:
    """One pytest run: {"killed": failed or timed out, "test": first failing id, "seconds"}."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    proc = subprocess.Popen([python, *PYTEST, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and the conformance workers it started
        proc.communicate()
        return {"killed": True, "test": f"timeout after {timeout:.0f} s", "seconds": time.monotonic() - start}
    seconds = time.monotonic() - start
    if proc.returncode in (0, 5):  # passed, or nothing collected
        return {"killed": False, "test": None, "seconds": seconds}
    found = FAILED.search(out)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return {"killed": True, "test": found.group(2) if found else f"exit {proc.returncode}: {last}",
            "seconds": seconds, "output_tail": out[-3000:]}


def conformance(python: str, impls: tuple[str, ...], archs: str, root: Path, timeout: float) -> dict:
    """The conformance suite per impl, stopping at the first that kills; seconds summed."""
    total = 0.0
    for impl in impls:
        result = run_pytest(python, ["conformance/", "--impl", impl, "--arch", archs], root, timeout)
        total += result["seconds"]
        if result["killed"]:
            return {**result, "test": f"[{impl}] {result['test']}", "seconds": total}
    return {"killed": False, "test": None, "seconds": total}


def run_mutant(mutant: Mutant, timeout: float) -> dict:
    with Sandbox(REPO) as box:
        box.apply(mutant)
        prop = run_pytest(box.python, [PROFILE, *property_files(mutant, box.root)], box.root, timeout)
        conf = conformance(box.python, mutant.impls, mutant.archs, box.root, timeout)
    return {"id": mutant.id, "backend": mutant.backend, "bug": mutant.bug, "knob": mutant.knob,
            "equivalent": mutant.equivalent, "reason": mutant.reason, "property": prop, "conformance": conf}


def baseline(mutants: list[Mutant], timeout: float) -> float:
    """Run the mutants' own property files and their conformance impls and archs on the unmutated
    copy (the rest of each backend's tests is `make test`'s); exit when anything fails."""
    impls: dict[str, list[str]] = {}
    for m in mutants:
        for impl in m.impls:
            impls.setdefault(impl, []).extend(a for a in m.archs.split(",") if a not in impls.get(impl, []))
    files = list(dict.fromkeys(f for m in mutants for f in m.tests))
    with Sandbox(REPO) as box:
        runs = [run_pytest(box.python, [PROFILE, *files], box.root, timeout)]
        runs += [run_pytest(box.python, ["conformance/", "--impl", impl, "--arch", ",".join(archs)], box.root, timeout)
                 for impl, archs in impls.items()]
    failed = [r for r in runs if r["killed"]]
    if failed:
        sys.exit("the unmutated tree fails its own suites, so no mutant can be judged: "
                 + "; ".join(r["test"] for r in failed) + "\n" + failed[0].get("output_tail", ""))
    return sum(r["seconds"] for r in runs)


def line(r: dict) -> str:
    def part(name: str) -> str:
        s = r[name]
        return f"{name}: {'killed by ' + s['test'] if s['killed'] else 'SURVIVED'} ({s['seconds']:.1f} s)"
    tag = " [equivalent]" if r["equivalent"] else ""
    return f"{r['id']}{tag}  {part('property')}  {part('conformance')}"


def prepare_out(out: Path) -> None:
    """`out` must be new, empty, or a directory this tool wrote before."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        sys.exit(f"--out {out} is not empty and not a mutation output directory; choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m tools.mutation.run\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tools.mutation.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="ID", help="run these mutants (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (each needs ~4 GiB)")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "mutation", help="where results.json goes")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds one pytest run may take")
    ap.add_argument("--render", type=Path, metavar="RESULTS", help="only rewrite the docs table from RESULTS")
    ap.add_argument("--docs", type=Path, default=REPO / report.DOCS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.render:
        report.write_docs(report.load(args.render), args.docs)
        print(f"wrote the table of {args.render} into {args.docs}")
        return
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    try:
        mutants = by_id(args.only)
    except KeyError as e:
        ap.error(e.args[0])
    prepare_out(args.out)
    start = time.monotonic()
    base = baseline(mutants, args.timeout)
    print(f"baseline passed ({base:.0f} s); {len(mutants)} mutants, --jobs {args.jobs}", flush=True)

    def one(m: Mutant) -> dict:
        result = run_mutant(m, args.timeout)
        print(line(result), flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, mutants))
    run = {"date": datetime.date.today().isoformat(), "jobs": args.jobs, "seconds": time.monotonic() - start,
           "baseline_seconds": base, "results": results}
    (args.out / "results.json").write_text(json.dumps(run, indent=1))
    print("\n" + report.render(run))
    if not args.only:
        report.write_docs(run, args.docs)
        print(f"\nwrote the table into {args.docs}")
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
