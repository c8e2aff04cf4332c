"""How closely float32 can compute a drawn config at all: the golden's own float32 run.

The float32 row (conformance/tolerances.py) is calibrated on the presets.  A drawn config can be
worse conditioned, so that no float32 computation meets a gate set for the presets, the golden's
own float32 run included: a post-sublayer LayerNorm over 7 dims of a clipped, QK-normed head of 4
amplifies rounding by orders of magnitude, and so does a sandwich LayerNorm without weights over
8 dims.  A test widens its NMSE gate for such a config to FLOAT32_PEER_FACTOR times the NMSE of
that float32 golden run (`golden_float32_nmse`): the twin must then be as accurate as a float32
run of the golden's math, which a real mistake (errors of 1e-4 and up) never is.  The float64
checks, which pin the math, are never widened.
"""

from __future__ import annotations

import numpy as np

from lmref import impl_numpy
from lmref.spec.config import ModelConfig

FLOAT32_PEER_FACTOR = 10.0


def golden_float32_nmse(config: ModelConfig, params: dict, tokens: np.ndarray, ref: np.ndarray, *,
                        pixel_values: np.ndarray | None = None) -> float:
    """NMSE against `ref` (the float64 golden's logits) of the golden run with the params and
    pixel_values in float32."""
    low_params = {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}
    low_pixels = None if pixel_values is None else np.asarray(pixel_values, dtype=np.float32)
    low = np.asarray(impl_numpy.forward(config, low_params, tokens, pixel_values=low_pixels), dtype=np.float64)
    return float(((low - ref) ** 2).sum() / (ref**2).sum())
