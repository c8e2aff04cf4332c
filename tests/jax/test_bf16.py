"""The JAX twin in bfloat16 against the float64 golden."""

from __future__ import annotations

from hypothesis import given, note
from hypothesis import strategies as st

import impl_jax
import impl_numpy
from spec.params import init_params
from tests.jax.common import fewer_examples, nmse, note_case
from tests.strategies import configs, seeds, token_batches

# The conformance suite's bfloat16 row (nmse 1e-3) holds on every tiny preset (`pytest
# conformance/ --impl impl_jax.adapter:bfloat16`: 2e-4 .. 3e-4 on the 160-token cases;
# test_adapter.py checks one) but not on every drawn config.  Over 1300 draws: nmse median
# 6.5e-5, p99 ~2e-3, max 1.45e-2, ~3% above 1e-3.  Tiny random models can be that sensitive:
# in several draws rounding only the weights to bfloat16, with float64 math, already gives
# nmse 1.0e-3 .. 1.5e-3; the worst draw (d_model 5, 3 layers, LayerNorm) gets 1.3e-3 from its
# weights and 1.1e-2 in bfloat16.  So drawn configs get this bound, 3x the worst seen, stated
# here rather than changed in the row.
DRAWN_CONFIG_NMSE = 5e-2


@fewer_examples(2)  # bfloat16 programs compile ~1.6x slower than float32 ones on the CPU
@given(config=configs(), seed=seeds, data=st.data())
def test_bfloat16_logits_are_near_the_golden(config, seed, data):
    tokens = data.draw(token_batches(config), label="tokens")
    note_case(seed, tokens)
    params = init_params(config, seed)
    logits = impl_jax.forward(config, impl_jax.from_canonical(params, "bfloat16"), tokens)
    assert logits.dtype == "bfloat16"
    error = nmse(logits, impl_numpy.forward(config, params, tokens))
    note(f"bfloat16 nmse {error:.3e}")
    assert error <= DRAWN_CONFIG_NMSE
