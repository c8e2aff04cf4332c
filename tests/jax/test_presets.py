"""Every tiny preset: the JAX twin (float32) against the golden on one fixed batch."""

from __future__ import annotations

import numpy as np
import pytest

from lmref import impl_jax
from lmref import impl_numpy
from lmref.spec.params import init_params
from lmref.spec.presets import PRESETS, tiny
from tests.jax.common import assert_float32_close


def fixed_tokens(vocab_size: int) -> np.ndarray:
    return np.random.default_rng(7).integers(0, vocab_size, size=(2, 13))  # [B, S]: odd length


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_tiny_preset_matches_the_golden(arch):
    config = tiny(arch)
    params = init_params(config, 3)
    tokens = fixed_tokens(config.vocab_size)
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, capture=golden)
    captured: dict = {}
    logits = impl_jax.forward(config, impl_jax.from_canonical(params), tokens, capture=captured)
    assert_float32_close(logits, ref, f"{arch} logits")
    for name, value in golden.items():
        assert_float32_close(captured[name], value, f"{arch} capture {name}")
