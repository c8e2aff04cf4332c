"""How closely float32 can compute a drawn config at all: the golden's own float32 run.

The float32 row (conformance/tolerances.py) is calibrated on the presets.  A drawn config can be
worse conditioned, so that no float32 computation meets a gate set for the presets, the golden's
own float32 run included: a post-sublayer LayerNorm over 7 dims of a clipped, QK-normed head of 4
amplifies rounding by orders of magnitude, and so does a sandwich LayerNorm over 8 dims.  A test
widens its gate for such a config to FLOAT32_PEER_FACTOR times the error of that float32 golden
run (`golden_float32_nmse`, `peer_gate`): the twin must then be as accurate as a float32 run of
the golden's math, which a real mistake (errors of 1e-4 and up) never is.  The float64 checks,
which pin the math, are never widened.
"""

from __future__ import annotations

import numpy as np

from lmref import impl_numpy
from lmref.spec.config import ModelConfig

FLOAT32_PEER_FACTOR = 10.0


def golden_in_float32(config: ModelConfig, params: dict, tokens: np.ndarray, *,
                      pixel_values: np.ndarray | None = None, capture: dict | None = None) -> np.ndarray:
    """The golden's logits (float64) with the params and pixel_values in float32; `capture` as
    impl_numpy.forward's."""
    low_params = {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}
    low_pixels = None if pixel_values is None else np.asarray(pixel_values, dtype=np.float32)
    logits = impl_numpy.forward(config, low_params, tokens, pixel_values=low_pixels, capture=capture)
    return np.asarray(logits, dtype=np.float64)


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    """sum((out - ref)^2) / sum(ref^2), in float64."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(((out - ref) ** 2).sum() / (ref**2).sum())


def golden_float32_nmse(config: ModelConfig, params: dict, tokens: np.ndarray, ref: np.ndarray, *,
                        pixel_values: np.ndarray | None = None) -> float:
    """NMSE against `ref` (the float64 golden's logits) of the golden run in float32."""
    return nmse(golden_in_float32(config, params, tokens, pixel_values=pixel_values), ref)


def peer_gate(nmse_max: float, atol: float, ref: np.ndarray, ref32: np.ndarray) -> tuple[float, float]:
    """(nmse_max, atol) for `ref` (float64 golden), each widened to FLOAT32_PEER_FACTOR times the
    error of the golden's own float32 run `ref32` (its NMSE, its largest |ref32 - ref|) where that
    is larger."""
    err = np.abs(np.asarray(ref32, np.float64) - np.asarray(ref, np.float64))
    return (max(nmse_max, FLOAT32_PEER_FACTOR * nmse(ref32, ref)),
            max(atol, FLOAT32_PEER_FACTOR * float(err.max(initial=0.0))))
