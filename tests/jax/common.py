"""Helpers shared by the JAX twin's tests: golden references, error metrics, pasteable notes."""

from __future__ import annotations

import numpy as np
from hypothesis import note, settings

from lmref.conformance.tolerances import DEFAULT_ROWS
from tests.conditioning import nmse, peer_gate

FLOAT32 = DEFAULT_ROWS["float32"]  # nmse 1e-10, |out - ref| <= 1e-4 + 1e-4 |ref|
BFLOAT16 = DEFAULT_ROWS["bfloat16"]


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


def assert_close_as_float32_can(out, ref, *, golden: np.ndarray, golden32: np.ndarray, nmse_max: float, atol: float,
                                rtol: float, what: str) -> None:
    """assert_close, its nmse_max and atol widened where the golden's own float32 run `golden32`
    is further off the float64 golden `golden` of the same inputs: an ill-conditioned drawn
    config (tests/conditioning.py `peer_gate`)."""
    nmse_max, atol = peer_gate(nmse_max, atol, golden, golden32)
    assert_close(out, ref, nmse_max=nmse_max, atol=atol, rtol=rtol, what=what)


def assert_float32_close_as_the_golden_can(out, ref: np.ndarray, ref32: np.ndarray, what: str) -> None:
    """The float32 row against the golden `ref`, widened as assert_close_as_float32_can says."""
    assert_close_as_float32_can(out, ref, golden=ref, golden32=ref32, nmse_max=FLOAT32.nmse, atol=FLOAT32.atol,
                                rtol=FLOAT32.rtol, what=what)


def note_case(seed: int, tokens: np.ndarray) -> None:
    """Print, on failure, a line that rebuilds the example (hypothesis prints the config)."""
    note(f"params = init_params(config, {seed}); tokens = np.{np.asarray(tokens)!r}")


def fewer_examples(divisor: int) -> settings:
    """The loaded profile's max_examples / divisor (at least 1), for a property whose every
    example compiles costly programs (see tests/xla_compiles.py).  Lowers cost only."""
    return settings(max_examples=max(1, settings.default.max_examples // divisor))
