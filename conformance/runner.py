"""Evaluate one golden case and capability with an adapter: `run_check`.

This is the one code path behind every conformance verdict: the pytest suite
(conformance/test_golden.py) calls it, and so do the project's negative-control tests, which
pass deliberately broken implementations and expect FAIL.

    from lmref.conformance.runner import run_check
    from lmref.conformance.store import GoldenStore
    case = GoldenStore().load("llama3", "prefill-b2-s7")
    result = run_check(case, my_forward, "forward")   # a function, adapter object, class or Adapter
    result.status, result.metrics, result.message

Statuses, best to worst: PASS, NOT SUPPORTED (the adapter lacks the capability, or raised
NotImplementedError), FAIL (a gate failed, or the result was invalid: wrong shape, dtype,
NaN / inf, not an array), ERROR (the adapter raised).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lmref.conformance.adapters import (
    CAPABILITIES, Adapter, AdapterCallError, AdapterNotSupported, AdapterResultError, Output, as_adapter,
)
from lmref.conformance.metrics import (
    Metrics, compare, compare_loss, describe, gate, gate_loss, locate_divergence, top_k,
)
from lmref.conformance.store import GoldenCase
from lmref.conformance.tolerances import Tolerance, Tolerances
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params

PASS, NOT_SUPPORTED, FAIL, ERROR = "PASS", "NOT SUPPORTED", "FAIL", "ERROR"


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one (case, capability): `metrics` is JSON-ready (empty when nothing
    was compared); `message` explains a non-PASS (multi-line; it starts with the status)."""

    status: str
    metrics: dict
    message: str


def applies(meta: dict, capability: str) -> bool:
    """Whether a case (its case.json) has a `capability` check: forward and loss on every
    case, decode on decode cases, capture on cases with captured intermediates."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; capabilities: {', '.join(CAPABILITIES)}")
    expected = meta["expected"]
    return {
        "forward": True,
        "decode": meta["kind"] == "decode",
        "loss": bool(expected.get("loss")),
        "capture": bool(expected.get("captures")),
    }[capability]


@functools.lru_cache(maxsize=16)
def case_params(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """The case's float64 weights, built once per (config, seed); shared, so never mutate them
    (the Adapter wrapper hands adapters copies)."""
    return init_params(config, seed)


def run_check(case: GoldenCase, adapter, capability: str, tolerances: Tolerances | None = None,
              *, repro: str | None = None) -> CheckResult:
    """Run `capability` of `adapter` on `case` and judge it against the golden.

    `adapter`: an `Adapter`, or anything `as_adapter` wraps (a forward function, an adapter
    object or class).  `tolerances`: the run's table (default: `Tolerances()`, the built-in
    rows); the case's own overrides are applied on top.  `repro`, when given, is appended to a
    FAIL or ERROR message as the command that re-runs this check alone.
    """
    adapter = as_adapter(adapter)
    if not applies(case.meta, capability):
        raise ValueError(f"{case.id} has no {capability} check (kind {case.kind!r})")
    result = _run(case, adapter, capability, tolerances or Tolerances())
    if repro and result.status in (FAIL, ERROR):
        result = CheckResult(result.status, result.metrics, f"{result.message}\nrepro: {repro}")
    return result


def _run(case: GoldenCase, adapter: Adapter, capability: str, tolerances: Tolerances) -> CheckResult:
    title = f"{case.id} {capability}"
    if not adapter.supports(capability):
        return CheckResult(NOT_SUPPORTED, {}, f"NOT SUPPORTED: {adapter.name} has no {capability} method")
    try:
        return _CHECKS[capability](case, adapter, tolerances)
    except AdapterNotSupported as e:
        return CheckResult(NOT_SUPPORTED, {}, f"NOT SUPPORTED: {e}")
    except AdapterResultError as e:
        return CheckResult(FAIL, {}, f"FAIL {title}: invalid result: {e}")
    except AdapterCallError as e:
        return CheckResult(ERROR, {}, f"ERROR {title}: {e}")


def _row(case: GoldenCase, adapter: Adapter, out: Output, tolerances: Tolerances) -> tuple[str, Tolerance, str]:
    """(row name, thresholds, a phrase saying how the row was chosen)."""
    name = adapter.row(out.dtype)
    if adapter.dtype:
        how = "declared by the adapter"
    else:
        how = f"inferred from the returned dtype {out.dtype}" if out.dtype else "inferred: the result has no dtype"
    return name, tolerances.row(name, case.tolerances, where=f"{case.id}/case.json"), how


def _params(case: GoldenCase) -> dict[str, np.ndarray]:
    return case_params(case.config, case.meta["weights"]["seed"])


# --- the four checks ------------------------------------------------------------------------------


def _check_logits(case: GoldenCase, adapter: Adapter, tolerances: Tolerances, capability: str) -> CheckResult:
    params = _params(case)
    if capability == "decode":
        out = adapter.decode(case.config, params, case.tokens, case.prompt_len)
    else:
        out = adapter.forward(case.config, params, case.tokens)
    row, tol, how = _row(case, adapter, out, tolerances)
    ref = case.expected["logits"]
    m = compare(out.value, ref, tol)
    failed = gate(m, tol)
    metrics = {"dtype": row, **m.to_dict()}
    if not failed:
        return CheckResult(PASS, metrics, "")
    lines = [f"metrics: {describe(m)}", *_position_lines(case, m, out.value, ref)]
    if capability == "decode":
        lines.append(_forward_on_decode_tokens(case, adapter, tol))
    lines += _divergence_lines(case, adapter, tol)
    return CheckResult(FAIL, metrics, _failure(case, capability, row, how, failed, lines))


def _check_loss(case: GoldenCase, adapter: Adapter, tolerances: Tolerances) -> CheckResult:
    out = adapter.loss(case.config, _params(case), case.tokens)
    row, tol, how = _row(case, adapter, out, tolerances)
    m = compare_loss(float(out.value), float(case.expected["loss"].reshape(-1)[0]))
    failed = gate_loss(m, tol)
    metrics = {"dtype": row, **m.to_dict()}
    if not failed:
        return CheckResult(PASS, metrics, "")
    lines = [f"metrics: loss out {m.out:.10g}, ref {m.ref:.10g}, abs_err {m.abs_err:.3g}, rel_err {m.rel_err:.3g}"]
    lines += _divergence_lines(case, adapter, tol)
    return CheckResult(FAIL, metrics, _failure(case, "loss", row, how, failed, lines))


def _check_capture(case: GoldenCase, adapter: Adapter, tolerances: Tolerances) -> CheckResult:
    captured = adapter.capture(case.config, _params(case), case.tokens)
    golden = case.captures
    known = [n for n in golden if n in captured]
    if not known:
        return CheckResult(FAIL, {}, (
            f"FAIL {case.id} capture: none of the golden components was captured\n"
            f"expected any of: {', '.join(golden)}\ngot: {', '.join(captured) or 'nothing'}"
        ))
    row, tol, how = _row(case, adapter, captured[known[0]], tolerances)
    d = locate_divergence(golden, {n: o.value for n, o in captured.items()}, tol.nmse)
    metrics = {"dtype": row, **d.to_dict()}
    failed = [f"first diverging component: {d.first} (nmse {d.first_nmse:.3g} > {tol.nmse:.3g})"] if d.first else []
    failed += [f"wrong shape: {m}" for m in d.misshaped]
    if not failed:
        return CheckResult(PASS, metrics, "")
    per_component = ", ".join(f"{n} {v:.3g}" for n, v in d.nmse.items())
    lines = [f"nmse per component: {per_component or 'none compared'}"]
    lines += [f"not captured (skipped): {', '.join(d.missing)}"] if d.missing else []
    return CheckResult(FAIL, metrics, _failure(case, "capture", row, how, failed, lines))


_CHECKS = {
    "forward": lambda case, adapter, tol: _check_logits(case, adapter, tol, "forward"),
    "decode": lambda case, adapter, tol: _check_logits(case, adapter, tol, "decode"),
    "loss": _check_loss,
    "capture": _check_capture,
}


# --- failure diagnostics ----------------------------------------------------------------------


def _failure(case: GoldenCase, capability: str, row: str, how: str, failed: list[str], lines: list[str]) -> str:
    head = f"FAIL {case.id} {capability} (tolerance row {row}, {how})"
    return "\n".join([head, "failed:", *(f"  {f}" for f in failed), *lines])


def _format_top(entries: list[tuple[int, float]]) -> str:
    return ", ".join(f"{token} ({logit:.4g})" for token, logit in entries)


def _position_lines(case: GoldenCase, m: Metrics, out: np.ndarray, ref: np.ndarray) -> list[str]:
    """The first bad position (or the worst one, when only whole-array gates failed) and the
    top-5 tokens of reference and output there."""
    if m.first_bad is not None:
        (b, s), label = m.first_bad, "first bad position"
    else:
        (b, s), label = m.max_abs_index[:2], "worst position (max_abs)"
    return [
        f"{label}: batch {b}, seq {s} (input token {int(case.tokens[b, s])})",
        f"  ref top-5: {_format_top(top_k(ref[b, s]))}",
        f"  out top-5: {_format_top(top_k(out[b, s]))}",
    ]


def _forward_on_decode_tokens(case: GoldenCase, adapter: Adapter, tol: Tolerance) -> str:
    """Whether forward (no cache) passes on the same tokens: tells a cache bug from a model bug."""
    try:
        out = adapter.forward(case.config, _params(case), case.tokens)
    except (AdapterCallError, AdapterResultError, AdapterNotSupported) as e:
        return f"forward on the same tokens could not be compared: {str(e).splitlines()[0]}"
    failed = gate(compare(out.value, case.expected["logits"], tol), tol)
    verdict = "fails too: " + "; ".join(failed) if failed else "passes: the KV-cache path is where it breaks"
    return f"forward (no cache) on the same tokens {verdict}"


def _divergence_lines(case: GoldenCase, adapter: Adapter, tol: Tolerance) -> list[str]:
    """Run the adapter's capture on the case's tokens and name the first diverging component."""
    if not case.captures:
        return []
    if not adapter.supports("capture"):
        return ["first diverging component: unknown (the adapter has no capture)"]
    try:
        captured = adapter.capture(case.config, _params(case), case.tokens)
    except (AdapterCallError, AdapterResultError, AdapterNotSupported) as e:
        return [f"first diverging component: unknown (capture failed: {str(e).splitlines()[0]})"]
    d = locate_divergence(case.captures, {n: o.value for n, o in captured.items()}, tol.nmse)
    return [d.describe()] if d.describe() else []
