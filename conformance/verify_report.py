"""What `lmref verify` prints and writes (`--report-json`), from a conformance/verify.py Verification.

The console report: the checkpoint, the implementation and its tolerance row, the prompt; with
captures, one line per layer (its output's max abs difference and nmse against the golden, and
"ok" or the first of its components whose nmse exceeds the row's); the logits' metrics and
failed gates; the first diverging layer; the verdict (PASS, FAIL, ERROR).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lmref.conformance.metrics import jsonable, describe
from lmref.conformance.verify import Component, Verification
from lmref.spec.outputs import VERIFY_REPORT_FORMAT, write_report_file

REPORT_FORMAT = VERIFY_REPORT_FORMAT


def _stage(name: str) -> str:
    """The row a captured component belongs to: "layers.3" for "layers.3.mlp", else itself."""
    return ".".join(name.split(".")[:2]) if name.startswith("layers.") else name


def layer_rows(components: list[Component]) -> list[tuple[str, Component | None, Component | None]]:
    """(stage, its output component, its first diverging component) in computation order: a
    layer's output is `layers.{i}.out`; embed, final_norm and logits are their own output."""
    stages: dict[str, list[Component]] = {}
    for c in components:
        stages.setdefault(_stage(c.name), []).append(c)
    rows = []
    for stage, parts in stages.items():
        out = next((c for c in parts if c.name in (stage, f"{stage}.out")), None)
        rows.append((stage, out, next((c for c in parts if c.diverged), None)))
    return rows


def _layer_line(stage: str, out: Component | None, bad: Component | None, threshold: float) -> str:
    numbers = f"{out.max_abs:11.3g} {out.nmse:11.3g}" if out else f"{'-':>11} {'-':>11}"
    verdict = "ok" if bad is None else f"DIVERGES: {bad.name} nmse {bad.nmse:.3g} > {threshold:.3g}"
    return f"  {stage:<14} {numbers}  {verdict}"


def _capture_lines(result: Verification) -> list[str]:
    lines = [f"captures: {result.capture_note}"]
    if result.divergence is None:
        return lines
    threshold = result.divergence.threshold
    lines.append(f"  {'component':<14} {'max_abs':>11} {'nmse':>11}  verdict (nmse bound {threshold:.3g}, "
                 f"the {result.row} row)")
    lines += [_layer_line(stage, out, bad, threshold) for stage, out, bad in layer_rows(result.components)]
    extra = [line for line in result.divergence.describe().splitlines() if not line.startswith(("first", "no "))]
    lines += [f"  {line}" for line in extra]
    if result.divergence.first is None:
        lines.append("first diverging layer: none")
    elif result.first_layer is not None:
        lines.append(f"first diverging layer: {result.first_layer} ({result.divergence.first}: nmse "
                     f"{result.divergence.first_nmse:.3g} > {threshold:.3g})")
    else:
        lines.append(f"first diverging component: {result.divergence.first} (before or after the layers)")
    return lines + [f"  failed capture check: {failed}" for failed in result.capture_failed]


def report_lines(result: Verification) -> list[str]:
    """The console report (module docstring)."""
    a = result.adapter
    spec = "" if a.spec == a.name else f" ({a.spec})"
    lines = [f"checkpoint: {result.directory} ({result.model_type}, {result.n_layers} layers)",
             f"implementation: {a.name}{spec}, version {a.version}; tolerance row {result.row}"
             + (f"; run overrides: {json.dumps(result.run_overrides)}" if result.run_overrides else ""),
             f"prompt: {result.tokens.shape[1]} tokens {result.tokens[0].tolist()}"]
    if result.error is not None:
        return lines + [f"implementation: {result.error}", f"verdict: {result.verdict}"]
    lines += [f"time: {', '.join(f'{k} {v:.2f} s' for k, v in result.seconds.items())}", *_capture_lines(result),
              f"logits: {describe(result.logits)}"]
    lines += [f"  failed gate: {failed}" for failed in result.logits_failed]
    return lines + [f"verdict: {result.verdict}"]


def report_dict(result: Verification) -> dict:
    """The JSON report: every number of the console report, and the golden-side facts."""
    a = result.adapter
    data = {
        "format": REPORT_FORMAT, "checkpoint": result.directory, "model_type": result.model_type,
        "n_layers": result.n_layers, "tokens": result.tokens.tolist(),
        "implementation": {"name": a.name, "spec": a.spec, "version": a.version},
        "tolerance_row": result.row, "tolerance": dataclasses.asdict(result.tolerance),
        "run_overrides": result.run_overrides,
        "seconds": result.seconds, "error": result.error, "captures": result.capture_note,
        "logits": None if result.logits is None else result.logits.to_dict(), "logits_failed": result.logits_failed,
        "components": [dataclasses.asdict(c) for c in result.components],
        "first_diverging_component": result.divergence.first if result.divergence else None,
        "first_diverging_layer": result.first_layer, "capture_failed": result.capture_failed,
        "verdict": result.verdict,
    }
    return jsonable(data)


def write_report(result: Verification, path: str | Path) -> None:
    write_report_file(Path(path), json.dumps(report_dict(result), indent=2) + "\n")
