"""Helpers shared by the JAX twin's tests: golden references, error metrics, pasteable notes."""

from __future__ import annotations

import numpy as np
from hypothesis import note, settings

from lmref.conformance.tolerances import DEFAULT_ROWS

FLOAT32 = DEFAULT_ROWS["float32"]  # nmse 1e-10, |out - ref| <= 1e-4 + 1e-4 |ref|
BFLOAT16 = DEFAULT_ROWS["bfloat16"]


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    """sum((out - ref)^2) / sum(ref^2), in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(((out - ref) ** 2).sum() / (ref**2).sum())


def assert_close(out, ref: np.ndarray, *, nmse_max: float, atol: float, rtol: float, what: str) -> None:
    """NMSE and elementwise |out - ref| <= atol + rtol |ref|; the message says where it is worst."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"{what}: shape {out.shape}, expected {ref.shape}"
    err = np.abs(out - ref)
    excess = err - (atol + rtol * np.abs(ref))
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    got_nmse = nmse(out, ref)
    assert got_nmse <= nmse_max and excess[worst] <= 0, (
        f"{what}: nmse {got_nmse:.3e} (max {nmse_max:.0e}); max abs err {err.max():.3e}; worst at "
        f"{tuple(int(i) for i in worst)}: {out[worst]!r} vs {ref[worst]!r} (atol {atol}, rtol {rtol})"
    )


def assert_float32_close(out, ref: np.ndarray, what: str) -> None:
    """The conformance suite's float32 row (conformance/tolerances.py): nmse, atol, rtol."""
    assert_close(out, ref, nmse_max=FLOAT32.nmse, atol=FLOAT32.atol, rtol=FLOAT32.rtol, what=what)


def note_case(seed: int, tokens: np.ndarray) -> None:
    """Print, on failure, a line that rebuilds the example (hypothesis prints the config)."""
    note(f"params = init_params(config, {seed}); tokens = np.{np.asarray(tokens)!r}")


def fewer_examples(divisor: int) -> settings:
    """The loaded profile's max_examples / divisor (at least 1), for a property whose every
    example compiles costly programs (see tests/xla_compiles.py).  Lowers cost only."""
    return settings(max_examples=max(1, settings.default.max_examples // divisor))
