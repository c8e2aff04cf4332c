"""The kinds of control (tests/controls.py): the golden in float32, with one mistake made
through the config, a swapped function, or a wrong parameter layout."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from lmref import impl_numpy
import lmref.impl_numpy.moe
from lmref.spec.config import ModelConfig
from lmref.spec.params import param_shapes


def _float32(params: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}


def _float32_images(pixel_values: np.ndarray | None) -> np.ndarray | None:
    return None if pixel_values is None else np.asarray(pixel_values, dtype=np.float32)


class Float32Golden:
    """The golden run in float32: a correct float32 implementation (the positive control).

    Subclasses change one thing: `adjust` edits the config the math sees, `patches` swaps
    functions of impl_numpy for the duration of a call.
    """

    name = "numpy-float32"
    version = "control"
    dtype = "float32"

    def adjust(self, config: ModelConfig) -> ModelConfig:
        return config

    def params_for(self, config: ModelConfig, params: dict) -> dict:
        """The weights the computation sees: the case's, in float32."""
        return _float32(params)

    def patches(self) -> dict[tuple[object, str], Callable]:
        return {}

    @contextlib.contextmanager
    def _patched(self) -> Iterator[None]:
        saved = {target: getattr(*target) for target in self.patches()}
        try:
            for (module, attr), replacement in self.patches().items():
                setattr(module, attr, replacement)
            yield
        finally:
            for (module, attr), original in saved.items():
                setattr(module, attr, original)

    def forward(self, config, params, tokens, pixel_values=None):
        with self._patched():
            return impl_numpy.forward(self.adjust(config), self.params_for(config, params), tokens,
                                      pixel_values=_float32_images(pixel_values))

    def decode(self, config, params, tokens, prompt_len, pixel_values=None):
        with self._patched():
            return impl_numpy.decode(self.adjust(config), self.params_for(config, params), tokens, prompt_len,
                                     pixel_values=_float32_images(pixel_values))

    def loss(self, config, params, tokens, pixel_values=None):
        with self._patched():
            return impl_numpy.loss(self.adjust(config), self.params_for(config, params), tokens,
                                   pixel_values=_float32_images(pixel_values))

    def capture(self, config, params, tokens, pixel_values=None):
        captured: dict = {}
        with self._patched():
            impl_numpy.forward(self.adjust(config), self.params_for(config, params), tokens,
                               pixel_values=_float32_images(pixel_values), capture=captured)
        return captured

    def routing(self, config, params, tokens, pixel_values=None):
        """The experts chosen from the float32 router logits (conformance/routing.py)."""
        captured = self.capture(config, params, tokens, pixel_values)
        with self._patched():
            return {name.removesuffix(".router"): lmref.impl_numpy.moe.route(self.adjust(config), z)[0]
                    for name, z in captured.items() if name.endswith(".router")}


def kept_params(config: ModelConfig, params: dict) -> dict:
    """The weights a misread `config` has a place for (a norm it shares, a gate it drops: gone)."""
    shapes = param_shapes(config)
    return {k: v for k, v in params.items() if k in shapes}


class ConfigMistake(Float32Golden):
    """A control whose mistake is a wrong config value (a misread hyperparameter).

    dataclasses.replace re-validates, so a control can only make changes the schema accepts.
    """

    def __init__(self, name: str, **changes):
        self.name = name
        self.changes = changes

    def adjust(self, config):
        return dataclasses.replace(config, **self.changes)

    def params_for(self, config, params):
        return kept_params(self.adjust(config), super().params_for(config, params))


class PatchMistake(Float32Golden):
    """A control whose mistake is a wrong function (a bug in the code)."""

    def __init__(self, name: str, module: object, attr: str, replacement: Callable):
        self.name = name
        self.target = (module, attr)
        self.replacement = replacement

    def patches(self):
        return {self.target: self.replacement}



@dataclass(frozen=True)
class Control:
    """A broken implementation and the arch whose suite it must fail."""

    arch: str
    adapter: Float32Golden
    what: str
