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
NaN / inf, not an array; or a capture compared nothing but the logits), ERROR (the adapter
raised; under pytest also: its worker process exited, or it ran past --timeout).

The verdict uses one tolerance row: the dtype the adapter declares, float32 when it declares
none (never the dtype its results come back in).  `metrics["tightest_row"]` names the
tightest row (float64, float32, float16, bfloat16) the result meets, so that a bfloat16 pass
never reads as a float32 pass; `metrics["case_tolerances"]` shows a case's own overrides.

`run_check` calls the adapter in this process (the project's tests and controls pass adapter
objects); the pytest suite hands it a WorkerAdapter (conformance/worker_adapter.py) that runs each
call in a worker process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from lmref.conformance.adapters import (
    CAPABILITIES, Adapter, AdapterCallError, AdapterNotSupported, as_adapter,
)
from lmref.conformance.metrics import (
    ONLY_LOGITS, Metrics, compare, compare_loss, describe, gate, gate_loss, locate_divergence, rows_met, top_k,
)
from lmref.conformance.results import AdapterResultError
from lmref.conformance.routing import first_flip
from lmref.conformance.store import GoldenCase, case_params  # noqa: F401  (case_params: re-exported)
from lmref.conformance.tolerances import Tolerance, Tolerances

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
    case, decode on decode cases, capture on cases with captured intermediates, routing on
    every case of a mixture of experts."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; capabilities: {', '.join(CAPABILITIES)}")
    expected = meta["expected"]
    return {
        "forward": True,
        "decode": meta["kind"] == "decode",
        "loss": bool(expected.get("loss")),
        "capture": bool(expected.get("captures")),
        "routing": "routing" in meta,
    }[capability]


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


@dataclass(frozen=True)
class _Row:
    """The row a check is judged by, every row (for the tightest one met), and how it was chosen."""

    name: str
    tol: Tolerance
    rows: dict[str, Tolerance]
    how: str

    def tightest(self, met: list[str]) -> str | None:
        return next((name for name in self.rows if name in met), None)


def _row(case: GoldenCase, adapter: Adapter, tolerances: Tolerances) -> _Row:
    """The declared row (float32 when the adapter declares none), with the case's overrides and the run's."""
    name = adapter.row()
    rows = tolerances.all_rows(case.tolerances, where=f"{case.id}/case.json")
    return _Row(name, rows[name], rows, adapter.row_phrase())


def _metrics(case: GoldenCase, row: _Row, tightest: str | None, values: dict) -> dict:
    """The JSON-ready metrics of a compared check: its row, the tightest row met, the case's
    own tolerance overrides (when it has any), then the values."""
    head = {"dtype": row.name, "tightest_row": tightest}
    if case.tolerances:
        head["case_tolerances"] = case.tolerances
    return {**head, **values}


# --- the checks ------------------------------------------------------------------------------


def _check_logits(case: GoldenCase, adapter: Adapter, tolerances: Tolerances, capability: str) -> CheckResult:
    """forward's or decode's logits against the golden.  A decode that passes is called again on
    the same inputs and must pass again: an implementation that keeps its KV cache (or its
    position count) from one call to the next gets its first call right only, and the suite
    calls decode once per case."""
    out = adapter.call_case(capability, case)
    row = _row(case, adapter, tolerances)
    ref = case.prefill_logits if capability == "forward" else case.expected["logits"]
    m = compare(out.value, ref, row.tol)
    failed = gate(m, row.tol)
    met = rows_met(out.value, ref, row.rows, m)
    stale = False  # a decode whose second identical call fails where the first passed
    if not failed and capability == "decode":
        second = adapter.call_case(capability, case)
        m2 = compare(second.value, ref, row.tol)
        met = [name for name in met if name in rows_met(second.value, ref, row.rows, m2)]
        failed = [f"a second identical call: {line}" for line in gate(m2, row.tol)]
        stale = bool(failed)
        if stale or m2.nmse > m.nmse:  # the metrics of the worse call
            out, m = second, m2
    metrics = _metrics(case, row, row.tightest(met), m.to_dict())
    if not failed:
        return CheckResult(PASS, metrics, "")
    lines = [f"metrics: {describe(m)}", *_position_lines(case, m, out.value, ref)]
    if stale:
        lines.append("the first of two identical decode calls passed: state is kept from one call to the next "
                     "(a KV cache or position counter not reset?)")
        return CheckResult(FAIL, metrics, _failure(case, capability, row, failed, lines))
    cache_only = False  # a decode whose forward passes: the captures (a prefill's) cannot show it
    if capability == "decode":
        line, cache_only = _forward_on_decode_tokens(case, adapter, row.tol)
        lines.append(line)
    lines += [] if cache_only else _divergence_lines(case, adapter, row.tol)
    return CheckResult(FAIL, metrics, _failure(case, capability, row, failed, lines))


def loss_terms(config) -> list[str]:
    """The terms the golden's loss adds to the mean cross-entropy for `config` (what a port that
    computes the cross-entropy alone misses)."""
    moe = config.moe
    terms = [f"{config.logit_z_loss_coef:g} x the logit z-loss"] if config.logit_z_loss_coef > 0 else []
    if moe is not None and moe.aux_loss_coef > 0:
        terms.append(f"{moe.aux_loss_coef:g} x the router load-balancing loss")
    if moe is not None and moe.router_z_loss_coef > 0:
        terms.append(f"{moe.router_z_loss_coef:g} x the router z-loss")
    return terms


def _check_loss(case: GoldenCase, adapter: Adapter, tolerances: Tolerances) -> CheckResult:
    out = adapter.call_case("loss", case)
    row = _row(case, adapter, tolerances)
    m = compare_loss(float(out.value), float(case.expected["loss"].reshape(-1)[0]))
    failed = gate_loss(m, row.tol)
    tightest = row.tightest([name for name, tol in row.rows.items() if not gate_loss(m, tol)])
    metrics = _metrics(case, row, tightest, m.to_dict())
    if not failed:
        return CheckResult(PASS, metrics, "")
    lines = [f"metrics: loss out {m.out:.10g}, ref {m.ref:.10g}, abs_err {m.abs_err:.3g}, rel_err {m.rel_err:.3g}"]
    lines += [f"the reference loss adds {', '.join(terms)} to the cross-entropy (impl_numpy/model.py `loss`)"
              ] if (terms := loss_terms(case.config)) else []
    lines += _divergence_lines(case, adapter, row.tol)
    return CheckResult(FAIL, metrics, _failure(case, "loss", row, failed, lines))


def _check_capture(case: GoldenCase, adapter: Adapter, tolerances: Tolerances) -> CheckResult:
    captured = adapter.call_case("capture", case)
    golden = case.captures
    counts = {"components_compared": 0, "components_expected": len(golden)}
    known = [n for n in golden if n in captured]
    if not known:
        return CheckResult(FAIL, counts, (
            f"FAIL {case.id} capture: none of the golden components was captured (0 of {len(golden)} components)\n"
            f"expected any of: {', '.join(golden)}\ngot: {', '.join(captured) or 'nothing'}"
        ))
    row = _row(case, adapter, tolerances)
    d = locate_divergence(golden, {n: o.value for n, o in captured.items()}, row.tol.nmse)
    counts["components_compared"] = compared = len(d.nmse)
    of = f"{compared} of {len(golden)} components"
    only_logits = d.only_logits
    # The check passes a row when every compared component is within its nmse, none is misshaped,
    # and something besides the logits (which forward already checks) was compared.
    worst = float(np.max(list(d.nmse.values()))) if d.nmse else 0.0  # NaN if any is: no row admits it
    judged = not (only_logits or d.misshaped or not d.nmse)
    met = [name for name, tol in row.rows.items() if worst <= tol.nmse] if judged else []
    metrics = _metrics(case, row, row.tightest(met), {**counts, **d.to_dict()})
    failed = [d.first_line()] if d.first else []
    failed += [f"wrong shape: {m}" for m in d.misshaped]
    if only_logits:
        intermediates = [n for n in golden if n not in ONLY_LOGITS]
        failed.append(f"compared nothing but logits ({of}): capture must return intermediates, "
                      f"any of {', '.join(intermediates)}")
    if not failed:
        return CheckResult(PASS, metrics, f"PASS ({of})" + (f"; {d.unknown_line()}" if d.unknown else ""))
    per_component = ", ".join(f"{n} {v:.3g}" for n, v in d.nmse.items())
    lines = [f"nmse per component ({of}): {per_component or 'none compared'}"]
    lines += [f"not captured (skipped): {', '.join(d.missing)}"] if d.missing else []
    lines += [d.unknown_line()] if d.unknown else []
    return CheckResult(FAIL, metrics, _failure(case, "capture", row, failed, lines))


def _check_routing(case: GoldenCase, adapter: Adapter, tolerances: Tolerances) -> CheckResult:
    """Every token of every MoE layer must choose the golden's experts: no tolerance applies
    (the case keeps every routing gap >= its required margin, conformance/routing.py)."""
    got = adapter.call_case("routing", case)
    layers, k = case.meta["routing"]["layers"], case.meta["routing"]["k"]
    top = {name: case.expected[f"routing.{name}"] for name in layers}
    scores = {name: case.expected[f"routing_logits.{name}"] for name in layers}
    tokens = len(layers) * case.tokens.size
    found = first_flip(top, scores, got, k)
    metrics = {"tokens_routed": tokens, "flipped": found[0] if found else 0,
               "smallest_gap": case.meta["routing"]["smallest_gap"]}
    if found is None:
        return CheckResult(PASS, metrics, "")
    flips, first = found
    return CheckResult(FAIL, metrics, (
        f"FAIL {case.id} routing: {flips} of {tokens} (layer, token) pairs chose other experts than the golden\n"
        f"first: {first}"))


_CHECKS = {
    "forward": lambda case, adapter, tol: _check_logits(case, adapter, tol, "forward"),
    "decode": lambda case, adapter, tol: _check_logits(case, adapter, tol, "decode"),
    "loss": _check_loss,
    "capture": _check_capture,
    "routing": _check_routing,
}


# --- failure diagnostics ----------------------------------------------------------------------


def _failure(case: GoldenCase, capability: str, row: _Row, failed: list[str], lines: list[str]) -> str:
    head = f"FAIL {case.id} {capability} (tolerance row {row.name}, {row.how})"
    if case.tolerances:
        head += f"\ncase tolerance overrides (case.json): {json.dumps(case.tolerances)}"
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


def _forward_on_decode_tokens(case: GoldenCase, adapter: Adapter, tol: Tolerance) -> tuple[str, bool]:
    """Whether forward (no cache) passes on the same tokens: tells a cache bug from a model bug.
    (The line, True when forward passed.)"""
    try:
        out = adapter.call_case("forward", case)
    except (AdapterCallError, AdapterResultError, AdapterNotSupported) as e:
        return f"forward on the same tokens could not be compared: {str(e).splitlines()[0]}", False
    failed = gate(compare(out.value, case.prefill_logits, tol), tol)
    verdict = "fails too: " + "; ".join(failed) if failed else "passes: the KV-cache path is where it breaks"
    return f"forward (no cache) on the same tokens {verdict}", not failed


COMPUTED_NOTE = "golden captures computed now by impl_numpy: the store keeps none for this case"


def _golden_captures(case: GoldenCase) -> tuple[dict[str, np.ndarray], str]:
    """The case's golden captures and a note on where they come from: stored, or for a case
    that stores none (long, decode) computed now by impl_numpy, the math that wrote the store,
    on the condition that it reproduces the case's stored logits (`lmref golden --check`'s
    rule).  They only name a component in a FAIL message; no verdict reads them."""
    if case.captures:
        return case.captures, ""
    from lmref import impl_numpy
    from lmref.conformance.generate import REGENERATION_RTOL, regeneration_gap

    captured: dict = {}
    logits = impl_numpy.forward(case.config, case.params(), case.tokens, pixel_values=case.pixel_values,
                                capture=captured)
    gap, scale = regeneration_gap(case.prefill_logits, logits)
    if not gap <= REGENERATION_RTOL * scale:
        return {}, ("first diverging component: unknown (the case stores no captures, and this lmref's golden "
                    "math does not reproduce its logits)")
    return captured, COMPUTED_NOTE


def _divergence_lines(case: GoldenCase, adapter: Adapter, tol: Tolerance) -> list[str]:
    """Run the adapter's capture on the case's tokens and name the first diverging component."""
    if not adapter.supports("capture"):
        return ["first diverging component: unknown (the adapter has no capture)"]
    golden, note = _golden_captures(case)
    if not golden:
        return [note]
    try:
        captured = adapter.call_case("capture", case)
    except (AdapterCallError, AdapterResultError, AdapterNotSupported) as e:
        return [f"first diverging component: unknown (capture failed: {str(e).splitlines()[0]})"]
    d = locate_divergence(golden, {n: o.value for n, o in captured.items()}, tol.nmse)
    return [d.describe(), *([f"({note})"] if note else [])] if d.describe() else []
