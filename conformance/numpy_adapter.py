"""The built-in `numpy` adapter (`--impl numpy`, the default): the float64 golden itself."""

from __future__ import annotations

import numpy as np

import lmref


class NumpyAdapter:
    """The built-in `numpy`: the float64 golden of impl_numpy, every capability.  (impl_numpy is
    imported on first use: the suite's own process needs it only to name the component of a
    FAIL whose case stores no captures, conformance/runner.py.)"""

    name = "numpy"
    version = f"lmref {lmref.__version__} (numpy {np.__version__})"
    dtype = "float64"

    def forward(self, config, params, tokens, pixel_values=None):
        from lmref import impl_numpy

        return impl_numpy.forward(config, params, tokens, pixel_values=pixel_values)

    def decode(self, config, params, tokens, prompt_len, pixel_values=None):
        from lmref import impl_numpy

        return impl_numpy.decode(config, params, tokens, prompt_len, pixel_values=pixel_values)

    def loss(self, config, params, tokens, pixel_values=None):
        from lmref import impl_numpy

        return impl_numpy.loss(config, params, tokens, pixel_values=pixel_values)

    def capture(self, config, params, tokens, pixel_values=None):
        from lmref import impl_numpy

        captured: dict = {}
        impl_numpy.forward(config, params, tokens, pixel_values=pixel_values, capture=captured)
        return captured

    def routing(self, config, params, tokens, pixel_values=None):
        from lmref.impl_numpy.moe import route

        captured = self.capture(config, params, tokens, pixel_values)
        return {name.removesuffix(".router"): route(config, z)[0] for name, z in captured.items()
                if name.endswith(".router")}
