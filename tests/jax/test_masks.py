"""impl_jax/masks.py against the golden's impl_numpy/masks.py (spec/MATH.md, "Masks") on the
same positions: every rule, windows and chunks odd and even, empty cache slots, positions in
any order (a ring buffer's), run eagerly and traced under jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmref.impl_jax import masks
from lmref.impl_numpy import masks as golden
from lmref.spec.plan import EMPTY_SLOT, Mask

MASKS = st.one_of(
    st.just(Mask("causal")),
    st.builds(lambda w: Mask("sliding", window=w), st.integers(1, 9)),
    st.builds(lambda c: Mask("chunked", chunk=c), st.integers(1, 9)),
)
QUERY_POSITIONS = st.lists(st.integers(0, 40), min_size=1, max_size=12)
KEY_POSITIONS = st.lists(st.one_of(st.just(EMPTY_SLOT), st.integers(0, 40)), min_size=1, max_size=12)


def golden_visible(mask: Mask, q: list[int], k: list[int]) -> np.ndarray:
    return golden.visible(mask, np.array(q, np.int64), np.array(k, np.int64))


@given(mask=MASKS, q=QUERY_POSITIONS, k=KEY_POSITIONS)
def test_visible_matches_the_golden(mask, q, k):
    got = masks.visible(mask, jnp.array(q, jnp.int32), jnp.array(k, jnp.int32))  # [Sq, Sk]
    assert got.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(got), golden_visible(mask, q, k), err_msg=f"{mask}, q {q}, k {k}")


@given(mask=MASKS, q=QUERY_POSITIONS, k=KEY_POSITIONS)
def test_visible_matches_the_golden_with_traced_positions(mask, q, k):
    traced = jax.jit(masks.visible, static_argnums=0)  # the rule static, the positions traced
    got = traced(mask, jnp.array(q, jnp.int32), jnp.array(k, jnp.int32))
    np.testing.assert_array_equal(np.asarray(got), golden_visible(mask, q, k), err_msg=f"{mask}, q {q}, k {k}")


def test_positions_offset_by_a_traced_length_as_in_a_decode_step():
    """A decode step's queries sit at cache.length + 0 .. S - 1, with length traced."""
    mask = Mask("sliding", window=3)
    k = [0, 1, 2, 3, 4, 5, EMPTY_SLOT, EMPTY_SLOT]  # [T]: 6 slots written

    @jax.jit
    def step(length):
        return masks.visible(mask, length + jnp.arange(2), jnp.array(k, jnp.int32))  # [2, T]

    np.testing.assert_array_equal(np.asarray(step(jnp.int32(4))), golden_visible(mask, [4, 5], k))


@pytest.mark.parametrize("mask,seen", [
    (Mask("causal"), [0, 1, 2, 3, 4, 5]),
    (Mask("sliding", window=1), [5]),
    (Mask("sliding", window=3), [3, 4, 5]),  # the key exactly W back (2) is not seen
    (Mask("chunked", chunk=4), [4, 5]),  # chunks [0, 4), [4, 8): chunks start at position 0
    (Mask("chunked", chunk=3), [3, 4, 5]),
])
def test_the_keys_a_query_at_position_5_sees(mask, seen):
    k = jnp.array([EMPTY_SLOT, *range(8)], jnp.int32)  # an empty slot, then positions 0 .. 7
    row = np.asarray(masks.visible(mask, jnp.array([5], jnp.int32), k))[0]  # [1 + 8]
    assert [int(p) for p in np.asarray(k)[row]] == seen


def test_an_empty_slot_is_never_visible():
    q = jnp.arange(12, dtype=jnp.int32)
    k = jnp.full(5, EMPTY_SLOT, jnp.int32)
    for mask in (Mask("causal"), Mask("sliding", window=50), Mask("chunked", chunk=1), Mask("chunked", chunk=7)):
        assert not np.asarray(masks.visible(mask, q, k)).any(), mask


def test_a_ring_buffer_needs_no_other_rule():
    """Slots hold positions out of order (a window-4 ring buffer after position 9): the mask
    follows the positions, whatever slot holds them."""
    ring = jnp.array([8, 9, 6, 7], jnp.int32)  # slot i holds the latest position p with p % 4 == i
    row = np.asarray(masks.visible(Mask("sliding", window=3), jnp.array([9], jnp.int32), ring))[0]
    np.testing.assert_array_equal(row, [True, True, False, True])
