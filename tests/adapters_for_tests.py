"""Adapters the conformance-plugin tests load with `--impl tests.adapters_for_tests:NAME`.

One correct positive control (the golden in float32), the rest broken on purpose: each must
get the status the suite promises (FAIL, ERROR or NOT SUPPORTED), never PASS.
"""

from __future__ import annotations

import numpy as np

from lmref import impl_numpy


def _float32(params: dict) -> dict:
    return {k: v.astype(np.float32) for k, v in params.items()}


class Float32Numpy:
    """Positive control: impl_numpy computes in the params' dtype, so float32 params give a
    float32 implementation (its RoPE tables may upcast some results: `dtype` says float32)."""

    name = "numpy-float32"
    version = "test"
    dtype = "float32"

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, _float32(params), tokens).astype(np.float32)

    def decode(self, config, params, tokens, prompt_len):
        return impl_numpy.decode(config, _float32(params), tokens, prompt_len).astype(np.float32)

    def loss(self, config, params, tokens):
        return np.float32(impl_numpy.loss(config, _float32(params), tokens))

    def capture(self, config, params, tokens):
        captured: dict = {}
        impl_numpy.forward(config, _float32(params), tokens, capture=captured)
        return {name: value.astype(np.float32) for name, value in captured.items()}


def forward_only(config, params, tokens):
    """The minimum a third party writes: one function, float64."""
    return impl_numpy.forward(config, params, tokens)


class CrashOnBatch3:
    """forward raises on batch-3 inputs (ERROR for that case only), decode raises
    NotImplementedError (NOT SUPPORTED), loss is correct."""

    name = "crash-on-batch-3"
    dtype = "float64"

    def forward(self, config, params, tokens):
        if tokens.shape[0] == 3:
            raise RuntimeError("simulated crash on batch 3")
        return impl_numpy.forward(config, params, tokens)

    def decode(self, config, params, tokens, prompt_len):
        raise NotImplementedError("no KV cache yet")

    def loss(self, config, params, tokens):
        return impl_numpy.loss(config, params, tokens)


def forward_wrong_shape(config, params, tokens):
    return impl_numpy.forward(config, params, tokens)[..., :-1]  # vocab one short


def forward_nan(config, params, tokens):
    logits = impl_numpy.forward(config, params, tokens)
    logits[0, 2, 5] = np.nan
    return logits


def forward_strings(config, params, tokens):
    return ["not", "logits"]


def forward_none(config, params, tokens):
    return None


def forward_int(config, params, tokens):
    return np.zeros(tokens.shape + (config.vocab_size,), dtype=np.int64)


class WrongSecondMlp:
    """A subtle bug: layer 1's MLP output is 0.1% too large.  forward and capture both see
    it, so the failure message must name layers.1.mlp as the first diverging component."""

    name = "wrong-second-mlp"
    dtype = "float64"

    @staticmethod
    def _broken(params: dict) -> dict:
        return params | {"layers.1.mlp.w_down": params["layers.1.mlp.w_down"] * 1.001}

    def forward(self, config, params, tokens):
        return impl_numpy.forward(config, self._broken(params), tokens)

    def capture(self, config, params, tokens):
        captured: dict = {}
        impl_numpy.forward(config, self._broken(params), tokens, capture=captured)
        return captured


class MutatesParams:
    """Scales its params in place: the suite hands out copies, so later cases stay correct."""

    dtype = "float64"

    def forward(self, config, params, tokens):
        logits = impl_numpy.forward(config, params, tokens)
        for value in params.values():
            value *= 2.0
        return logits
