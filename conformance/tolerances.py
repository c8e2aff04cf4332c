"""The tolerance policy: one table per dtype, overridable per case and per run.

Every row gates on all of these metrics (see conformance/metrics.py for the exact formulas):

  atol, rtol      allclose on logits: |out - ref| <= atol + rtol * |ref| for every element
  nmse            sum((out - ref)^2) / sum(ref^2) over all logits; also the per-component
                  threshold when locating the first diverging captured intermediate
  kl              max over positions of KL(softmax(ref) || softmax(out))
  top1            minimum fraction of decisive positions whose argmax agrees
  top1_margin     a position is decisive when the reference's top-1 minus top-2 logit
                  exceeds this margin (near-ties may flip legitimately at low precision)
  loss_atol,      |loss_out - loss_ref| <= loss_atol + loss_rtol * |loss_ref|
  loss_rtol

The float32 row is calibrated with controls (tests/controls.py, margins recorded in
conformance/TOLERANCES.md): a correct float32 port passes with 110x to spare, seventeen
broken ports fail by 340x or more.  Change the numbers here, in `DEFAULT_ROWS`, and nowhere
else; tests/test_controls.py then tells whether the calibration still holds.

Overrides, applied in this order (a later one wins for the metrics it names):
  1. the table below
  2. the case's case.json "tolerances": {"float32": {"nmse": 1e-8}}
  3. `--tolerances FILE.json`, the same nested shape
  4. `--tolerance float32.nmse=1e-8` (repeatable)
The run's overrides (3, 4) win over the case's: the person running the suite decides.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DTYPES = ("float64", "float32", "bfloat16", "float16")
# The rows from the tightest to the loosest: the report names the first one a check meets.
TIGHTEST_FIRST = ("float64", "float32", "float16", "bfloat16")


class ToleranceError(ValueError):
    """An override names an unknown dtype or metric, or gives a value that is not a threshold."""


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """The thresholds of one dtype row.  `inf` (or 0.0 for top1) turns a gate off."""

    atol: float
    rtol: float
    nmse: float
    kl: float
    top1: float
    top1_margin: float
    loss_atol: float
    loss_rtol: float


METRICS = tuple(f.name for f in dataclasses.fields(Tolerance))

DEFAULT_ROWS: dict[str, Tolerance] = {
    # The golden itself, or another float64 implementation: only summation order may differ.
    "float64": Tolerance(atol=1e-9, rtol=1e-9, nmse=1e-24, kl=1e-18, top1=1.0, top1_margin=1e-6,
                         loss_atol=1e-9, loss_rtol=1e-9),
    # A correct float32 NumPy port of the golden shows nmse ~4e-13, max_abs ~4e-6 on the store.
    "float32": Tolerance(atol=1e-4, rtol=1e-4, nmse=1e-10, kl=1e-9, top1=1.0, top1_margin=1e-3,
                         loss_atol=1e-5, loss_rtol=1e-5),
    "bfloat16": Tolerance(atol=0.2, rtol=0.05, nmse=1e-3, kl=1e-2, top1=0.9, top1_margin=0.1,
                          loss_atol=2e-2, loss_rtol=1e-2),
    # float16 weights and math in NumPy give nmse ~4e-6, max_abs ~2e-2 on the store.
    "float16": Tolerance(atol=0.05, rtol=0.01, nmse=3e-5, kl=1e-3, top1=0.97, top1_margin=0.02,
                         loss_atol=5e-3, loss_rtol=2e-3),
}

Overrides = dict[str, dict[str, float]]  # {"float32": {"nmse": 1e-8}}


def _check_value(where: str, dtype: str, metric: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToleranceError(f"{where}: {dtype}.{metric} must be a number, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an integer past float's range (JSON integers are unbounded)
        raise ToleranceError(f"{where}: {dtype}.{metric} must be a number a float can hold, got an integer of "
                             f"{len(str(abs(value)))} digits") from None
    if math.isnan(value) or value < 0:
        raise ToleranceError(f"{where}: {dtype}.{metric} must be a non-negative number, got {value!r}")
    if metric == "top1" and value > 1:
        raise ToleranceError(f"{where}: {dtype}.top1 is a fraction of positions in [0, 1], got {value!r}")
    return value


def check_overrides(data: object, where: str) -> Overrides:
    """Validate {dtype: {metric: number}}; return it with float values.  `where` names the source."""
    if not isinstance(data, dict):
        raise ToleranceError(f"{where}: tolerance overrides must be a JSON object {{dtype: {{metric: value}}}}, "
                             f"got {type(data).__name__}")
    checked: Overrides = {}
    for dtype, metrics in data.items():
        if dtype not in DTYPES:
            raise ToleranceError(f"{where}: unknown dtype {dtype!r}; dtypes: {', '.join(DTYPES)}")
        if not isinstance(metrics, dict):
            raise ToleranceError(f"{where}: {dtype} must map metric names to numbers, got {metrics!r}")
        for metric, value in metrics.items():
            if metric not in METRICS:
                raise ToleranceError(f"{where}: unknown metric {dtype}.{metric}; metrics: {', '.join(METRICS)}")
            checked.setdefault(dtype, {})[metric] = _check_value(where, dtype, metric, value)
    return checked


def parse_assignment(text: str) -> Overrides:
    """'float32.nmse=1e-8' -> {"float32": {"nmse": 1e-8}} (the `--tolerance` syntax)."""
    where = f"--tolerance {text}"
    key, sep, value = text.partition("=")
    dtype, dot, metric = key.strip().partition(".")
    if not sep or not dot:
        raise ToleranceError(f"{where}: expected DTYPE.METRIC=VALUE, e.g. float32.nmse=1e-8")
    try:
        number = float(value)
    except ValueError:
        raise ToleranceError(f"{where}: {value.strip()!r} is not a number") from None
    return check_overrides({dtype: {metric: number}}, where)


def load_overrides_file(path: str | Path) -> Overrides:
    """Read a `--tolerances FILE.json`: {dtype: {metric: value}}."""
    where = f"--tolerances {path}"
    if not str(path).strip():
        raise ToleranceError("--tolerances is empty (an unset shell variable?): give a JSON file of overrides")
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ToleranceError(f"{where}: cannot read the file ({e.strerror})") from None
    except (ValueError, RecursionError) as e:  # not UTF-8 (UnicodeDecodeError), not JSON, nested too deep
        raise ToleranceError(f"{where}: not valid JSON in UTF-8 ({e})") from None
    return check_overrides(data, where)


def _apply(rows: dict[str, Tolerance], overrides: Overrides) -> dict[str, Tolerance]:
    return {d: dataclasses.replace(row, **overrides.get(d, {})) for d, row in rows.items()}


@dataclass(frozen=True)
class Tolerances:
    """The table with the run's overrides applied; `row` adds a case's overrides on top."""

    rows: dict[str, Tolerance] = dataclasses.field(default_factory=lambda: dict(DEFAULT_ROWS))
    run_overrides: Overrides = dataclasses.field(default_factory=dict)

    def row(self, dtype: str, case_overrides: dict | None = None, where: str = "case.json") -> Tolerance:
        """The thresholds for `dtype`: table, then the case's overrides, then the run's."""
        if dtype not in self.rows:
            raise ToleranceError(f"no tolerance row for dtype {dtype!r}; dtypes: {', '.join(DTYPES)}")
        return self.all_rows(case_overrides, where)[dtype]

    def all_rows(self, case_overrides: dict | None = None, where: str = "case.json") -> dict[str, Tolerance]:
        """Every row with a case's overrides, then the run's, applied (tightest first)."""
        rows = _apply(self.rows, check_overrides(case_overrides or {}, where))
        rows = _apply(rows, self.run_overrides)
        return {d: rows[d] for d in TIGHTEST_FIRST if d in rows}


def build_tolerances(files: Sequence[str] = (), assignments: Sequence[str] = ()) -> Tolerances:
    """The run's tolerances from `--tolerances FILE` (each, in order) then `--tolerance D.M=V`."""
    merged: Overrides = {}
    sources = [load_overrides_file(f) for f in files] + [parse_assignment(a) for a in assignments]
    for overrides in sources:
        for dtype, metrics in overrides.items():
            merged.setdefault(dtype, {}).update(metrics)
    return Tolerances(run_overrides=merged)
