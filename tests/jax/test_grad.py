"""The JAX loss in float64: its value against the golden, its gradient against central finite
differences of the golden loss along a random direction."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from lmref import impl_jax
from lmref import impl_numpy
from lmref.spec.params import init_params
from tests.jax.common import fewer_examples, note_case
from tests.strategies import configs, seeds, token_batches

# A unit direction over every parameter and a step of 1e-6: truncation error ~1e-12 * L''',
# rounding ~1e-16 * L / 1e-6 ~ 1e-10, and the step moves each pre-activation by ~1e-8, so
# it almost never crosses a kink of relu or qkv_clip, where the two would rightly disagree.
STEP = 1e-6
ATOL, RTOL = 1e-8, 1e-6


def unit_direction(params: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)  # test inputs only; the stream need not be stable
    direction = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    norm = np.sqrt(sum((d**2).sum() for d in direction.values()))
    return {k: d / norm for k, d in direction.items()}


def golden_slope(config, params: dict, tokens: np.ndarray, direction: dict) -> float:
    """(L(p + h d) - L(p - h d)) / 2h, the golden loss in float64."""
    def shifted(sign: float) -> dict:
        return {k: v + sign * STEP * direction[k] for k, v in params.items()}
    return (impl_numpy.loss(config, shifted(1.0), tokens) - impl_numpy.loss(config, shifted(-1.0), tokens)) / (2 * STEP)


@fewer_examples(5)  # the backward pass triples the compile time of an example
@given(config=configs(), seed=seeds, data=st.data())
def test_gradient_matches_finite_differences_of_the_golden(config, seed, data):
    tokens = data.draw(token_batches(config).filter(lambda t: t.shape[1] >= 2), label="tokens")
    note_case(seed, tokens)
    params = init_params(config, seed)
    direction = unit_direction(params, seed)
    with jax.enable_x64(True):
        params64 = impl_jax.from_canonical(params, "float64")
        value, grads = jax.value_and_grad(impl_jax.loss, argnums=1)(config, params64, tokens)
    assert float(value) == pytest.approx(impl_numpy.loss(config, params, tokens), rel=1e-12)
    slope = sum(float(np.vdot(np.asarray(grads[k]), direction[k])) for k in params)
    expected = golden_slope(config, params, tokens, direction)
    note(f"grad . d = {slope!r}, finite difference = {expected!r}")
    assert abs(slope - expected) <= ATOL + RTOL * abs(expected)
