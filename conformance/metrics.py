"""Comparison metrics between an implementation's output and the float64 golden.

Everything is computed in float64.  For logits `out`, `ref` of shape [batch, seq, vocab]:

  max_abs     max |out - ref|, with its [b, s, v] index
  max_rel     max_abs / max |ref|  (scale-free; not an elementwise ratio, which explodes near 0)
  allclose    elements with |out - ref| > atol + rtol * |ref|: their count and the index of
              the worst one (largest excess over the bound)
  nmse        sum((out - ref)^2) / sum(ref^2)
  kl          per position KL(softmax(ref) || softmax(out)); its max and the [b, s] where it is
  top1        among decisive positions (reference top-1 minus top-2 logit > top1_margin), the
              fraction where argmax(out) == argmax(ref); the first disagreeing [b, s]

"First" positions are ordered by sequence position, then batch row: in a causal model the
earliest bad position is the best clue (a sliding-window bug starts at the window's edge).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lmref.conformance.tolerances import Tolerance

Position = tuple[int, int]  # (batch, seq)


@dataclass(frozen=True)
class Metrics:
    """Every logits metric, and where the output is worst."""

    shape: tuple[int, ...]
    max_abs: float
    max_abs_index: tuple[int, int, int]
    max_rel: float
    allclose_violations: int
    allclose_worst_index: tuple[int, int, int] | None
    nmse: float
    kl_max: float
    kl_index: Position
    top1: float
    decisive_positions: int
    positions: int
    top1_mismatch: Position | None  # first decisive position whose argmax differs
    top1_ref_token: int | None
    top1_out_token: int | None
    first_bad: Position | None  # first position failing allclose, kl or top1

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))


UNKNOWN_SHOWN = 8  # unknown capture names a message lists before "and N more"


def jsonable(value):
    """Tuples to lists, non-finite floats to strings ("nan", "inf": strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _index(flat: np.intp, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def first_position(mask: np.ndarray) -> Position | None:
    """The earliest True of a [batch, seq] mask, by seq then batch; None when all False."""
    hits = np.argwhere(mask.T)  # rows (s, b), sorted by s then b
    return None if len(hits) == 0 else (int(hits[0][1]), int(hits[0][0]))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """[..., V] -> [..., V], stable in float64 (the golden's formula, impl_numpy/model.py; not
    imported from there, so that the suite's process need not load the golden and SciPy: the
    adapter, the golden included, runs in a worker process)."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_per_position(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """KL(softmax(ref) || softmax(out)) per position: [B, S, V] -> [B, S], clipped at 0.

    With d = out - ref, KL = log E_p[exp(d)] - E_p[d] (p = softmax(ref)); centring d on E_p[d]
    makes it log1p(E_p[expm1(d)]), accurate to ~1e-16 * |d| instead of the ~1e-16 floor of
    sum p (log p - log q).  Positions with |d| >= 1 use the plain formula (no overflow).
    """
    logp_ref = log_softmax(ref)  # [B, S, V]
    p = np.exp(logp_ref)
    d = out - ref
    d = d - np.sum(p * d, axis=-1, keepdims=True)  # KL is invariant to shifting out per position
    small = np.max(np.abs(d), axis=-1) < 1.0  # [B, S]
    precise = np.log1p(np.sum(p * np.expm1(np.where(small[..., None], d, 0.0)), axis=-1))
    plain = np.sum(p * (logp_ref - log_softmax(out)), axis=-1)
    return np.maximum(np.where(small, precise, plain), 0.0)  # KL >= 0; a negative value is rounding


# Results of any finite size are compared: a square or an exponential that overflows is an inf
# metric, which fails its gate, not a RuntimeWarning (an exception under `-W error`).
QUIET_OVERFLOW = np.errstate(over="ignore")


@QUIET_OVERFLOW
def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    """sum((out - ref)^2) / sum(ref^2), in float64; inf when ref is all zero and out is not."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    err, scale = float(np.sum((out - ref) ** 2)), float(np.sum(ref**2))
    if scale == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / scale


def _top1(out: np.ndarray, ref: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(decisive [B, S], mismatch [B, S]): decisive positions and those whose argmax differs."""
    top2 = np.partition(ref, -2, axis=-1)[..., -2:] if ref.shape[-1] > 1 else np.full(ref.shape[:-1] + (2,), np.inf)
    decisive = (top2[..., 1] - top2[..., 0]) > margin
    mismatch = decisive & (out.argmax(axis=-1) != ref.argmax(axis=-1))
    return decisive, mismatch


@QUIET_OVERFLOW
def compare(out: np.ndarray, ref: np.ndarray, tol: Tolerance) -> Metrics:
    """All metrics of logits `out` against `ref` (same shape [B, S, V], finite)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    diff = np.abs(out - ref)  # [B, S, V]
    worst = int(np.argmax(diff))
    max_abs, ref_scale = float(diff.flat[worst]), float(np.max(np.abs(ref)))
    excess = diff - (tol.atol + tol.rtol * np.abs(ref))  # > 0 where allclose fails
    violating = excess > 0
    kl = kl_per_position(out, ref)  # [B, S]
    decisive, mismatch = _top1(out, ref, tol.top1_margin)
    mismatch_at = first_position(mismatch)
    n_decisive = int(decisive.sum())
    return Metrics(
        shape=tuple(ref.shape),
        max_abs=max_abs,
        max_abs_index=_index(worst, diff.shape),
        max_rel=max_abs / ref_scale if ref_scale > 0 else (0.0 if max_abs == 0 else float("inf")),
        allclose_violations=int(violating.sum()),
        allclose_worst_index=_index(np.argmax(excess), diff.shape) if violating.any() else None,
        nmse=nmse(out, ref),
        kl_max=float(kl.max()),
        kl_index=_index(np.argmax(kl), kl.shape),
        top1=1.0 - float(mismatch.sum()) / n_decisive if n_decisive else 1.0,
        decisive_positions=n_decisive,
        positions=int(decisive.size),
        top1_mismatch=mismatch_at,
        top1_ref_token=None if mismatch_at is None else int(ref[mismatch_at].argmax()),
        top1_out_token=None if mismatch_at is None else int(out[mismatch_at].argmax()),
        first_bad=first_position(violating.any(axis=-1) | (kl > tol.kl) | mismatch),
    )


def rows_met(out: np.ndarray, ref: np.ndarray, rows: dict[str, Tolerance], m: Metrics | None = None) -> list[str]:
    """The names of the `rows` whose every logits gate `out` passes (the same gates as `gate`
    over `compare`, with the row-independent parts computed once, or taken from `m`, the
    `compare` of the same arrays)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    diff, scale = np.abs(out - ref), np.abs(ref)
    error = nmse(out, ref) if m is None else m.nmse
    kl = float(kl_per_position(out, ref).max()) if m is None else m.kl_max
    if ref.shape[-1] > 1:
        top2 = np.partition(ref, -2, axis=-1)[..., -2:]
        gap = top2[..., 1] - top2[..., 0]
    else:
        gap = np.full(ref.shape[:-1], np.inf)
    differs = out.argmax(axis=-1) != ref.argmax(axis=-1)
    met = []
    for name, tol in rows.items():
        if not (error <= tol.nmse and kl <= tol.kl and bool(np.all(diff <= tol.atol + tol.rtol * scale))):
            continue
        decisive = gap > tol.top1_margin
        n = int(decisive.sum())
        top1 = 1.0 - float((decisive & differs).sum()) / n if n else 1.0
        if top1 >= tol.top1:
            met.append(name)
    return met


def gate(m: Metrics, tol: Tolerance) -> list[str]:
    """Descriptions of the failed gates ("nmse 3.2e-06 > 1e-10"); empty when all pass."""
    failed = []
    if m.allclose_violations:
        failed.append(
            f"allclose: {m.allclose_violations} of {int(np.prod(m.shape))} logits exceed atol {tol.atol:.3g} "
            f"+ rtol {tol.rtol:.3g} * |ref| (worst at {list(m.allclose_worst_index)})"
        )
    if not m.nmse <= tol.nmse:
        failed.append(f"nmse {m.nmse:.3g} > {tol.nmse:.3g}")
    if not m.kl_max <= tol.kl:
        failed.append(f"kl {m.kl_max:.3g} > {tol.kl:.3g} (at batch {m.kl_index[0]}, seq {m.kl_index[1]})")
    if not m.top1 >= tol.top1:
        b, s = m.top1_mismatch
        failed.append(
            f"top1 {m.top1:.4f} < {tol.top1:.4g} over {m.decisive_positions} decisive positions (first "
            f"disagreement at batch {b}, seq {s}: ref token {m.top1_ref_token}, out token {m.top1_out_token})"
        )
    return failed


def describe(m: Metrics) -> str:
    """All metric values on one line."""
    return (
        f"max_abs {m.max_abs:.3g} at {list(m.max_abs_index)}, max_rel {m.max_rel:.3g}, "
        f"allclose violations {m.allclose_violations}, nmse {m.nmse:.3g}, "
        f"kl_max {m.kl_max:.3g} at {list(m.kl_index)}, "
        f"top1 {m.top1:.4f} over {m.decisive_positions}/{m.positions} decisive positions"
    )


def top_k(logits: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """[(token, logit)] of the k largest logits of one position [V], largest first."""
    order = np.argsort(-np.asarray(logits, np.float64), kind="stable")[:k]
    return [(int(t), float(logits[t])) for t in order]


# --- loss -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossMetrics:
    out: float
    ref: float
    abs_err: float
    rel_err: float

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))


def compare_loss(out: float, ref: float) -> LossMetrics:
    """Absolute and relative error of a scalar loss."""
    abs_err = abs(float(out) - float(ref))
    rel_err = abs_err / abs(ref) if ref else (0.0 if abs_err == 0 else float("inf"))
    return LossMetrics(float(out), float(ref), abs_err, rel_err)


def gate_loss(m: LossMetrics, tol: Tolerance) -> list[str]:
    allowed = tol.loss_atol + tol.loss_rtol * abs(m.ref)
    if m.abs_err <= allowed:
        return []
    return [f"loss |out - ref| {m.abs_err:.3g} > loss_atol {tol.loss_atol:.3g} + loss_rtol {tol.loss_rtol:.3g} "
            f"* |ref| = {allowed:.3g} (out {m.out:.10g}, ref {m.ref:.10g})"]


# --- locating the first diverging intermediate ------------------------------------------------


ONLY_LOGITS = frozenset({"logits"})  # the component forward already judges


@dataclass(frozen=True)
class Divergence:
    """Where captured intermediates first leave the golden, in computation order."""

    first: str | None  # the first compared component whose nmse exceeds the threshold
    first_nmse: float | None
    threshold: float
    nmse: dict[str, float]  # every compared component, in computation order
    missing: list[str]  # golden components the adapter did not provide (skipped)
    misshaped: list[str]  # "name: expected (...), got (...)"
    unknown: list[str]  # names the adapter provided that the golden does not have

    @property
    def only_logits(self) -> bool:
        """Whether nothing but the logits was compared: no intermediate, so no capture to judge
        (the logits are judged by forward).  The suite's capture check and `lmref verify`
        --captures fail it alike."""
        return bool(self.nmse) and not set(self.nmse) - ONLY_LOGITS

    @property
    def none_compared(self) -> bool:
        """Whether none of the golden's components was captured (a misshaped one counts as captured)."""
        return not self.nmse and not self.misshaped

    def first_line(self) -> str | None:
        """'first diverging component: NAME (nmse X > T)', saying when the capture held NaN or
        inf (its nmse is then NaN, locate_divergence); None when no component diverged."""
        if self.first is None:
            return None
        nan = " (non-finite values)" if np.isnan(self.first_nmse) else ""
        return f"first diverging component: {self.first} (nmse {self.first_nmse:.3g}{nan} > {self.threshold:.3g})"

    def unknown_line(self) -> str | None:
        """The names the adapter captured that the golden has not (a naming mistake, as often as
        extra intermediates: spec/captures.py has the names), or None."""
        if not self.unknown:
            return None
        shown = ", ".join(self.unknown[:UNKNOWN_SHOWN]) + (f" and {len(self.unknown) - UNKNOWN_SHOWN} more"
                                                           if len(self.unknown) > UNKNOWN_SHOWN else "")
        return f"captured under names the golden does not have (ignored): {shown}"

    def describe(self) -> str:
        lines = []
        if self.first is not None:
            lines.append(self.first_line())
        elif self.nmse:
            lines.append(f"no captured component diverged ({len(self.nmse)} compared)")
        lines += [f"wrong shape: {m}" for m in self.misshaped]
        if self.missing:
            lines.append(f"not captured (skipped): {', '.join(self.missing)}")
        lines += [self.unknown_line()] if self.unknown else []
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))


def locate_divergence(golden: dict[str, np.ndarray], captured: dict[str, np.ndarray], threshold: float) -> Divergence:
    """Compare each golden component (in its order) that `captured` has and of the same shape."""
    values: dict[str, float] = {}
    misshaped, first = [], None
    for name, ref in golden.items():
        if name not in captured:
            continue
        out = captured[name]
        if tuple(np.shape(out)) != tuple(ref.shape):
            misshaped.append(f"{name}: expected {tuple(ref.shape)}, got {tuple(np.shape(out))}")
            continue
        values[name] = nmse(out, ref) if np.all(np.isfinite(out)) else float("nan")
        if first is None and not values[name] <= threshold:
            first = name
    return Divergence(
        first=first,
        first_nmse=None if first is None else values[first],
        threshold=threshold,
        nmse=values,
        missing=[n for n in golden if n not in captured],
        misshaped=misshaped,
        unknown=sorted(n for n in captured if n not in golden),
    )
