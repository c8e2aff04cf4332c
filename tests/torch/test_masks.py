"""impl_torch/masks.py against the golden's rules (impl_numpy/masks.py, spec/MATH.md "Masks"):
the same visibility on the same positions, for every rule, odd windows and chunks, keys in
any order (a ring buffer's), and empty slots (EMPTY_SLOT) among them."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmref.impl_numpy import masks as golden
from lmref.impl_torch import masks
from lmref.spec.plan import EMPTY_SLOT, Mask

MASKS = st.one_of(
    st.just(Mask("causal")),
    st.builds(lambda w: Mask("sliding", window=w), st.integers(1, 9)),
    st.builds(lambda c: Mask("chunked", chunk=c), st.integers(1, 9)),
)
POSITION = st.integers(0, 24)
KEY_POSITION = st.one_of(st.just(EMPTY_SLOT), POSITION)


def assert_same_as_golden(mask: Mask, q_positions: np.ndarray, k_positions: np.ndarray) -> None:
    """q_positions [P, S], k_positions [P, T]: the twin's [P, 1, S, T] row by row."""
    got = masks.visible(mask, torch.from_numpy(q_positions), torch.from_numpy(k_positions))
    assert got.dtype == torch.bool and got.shape == (len(q_positions), 1, q_positions.shape[1], k_positions.shape[1])
    for p in range(len(q_positions)):
        expected = golden.visible(mask, q_positions[p], k_positions[p])  # [S, T]
        np.testing.assert_array_equal(got[p, 0].numpy(), expected, err_msg=f"{mask}, row {p}")


@st.composite
def position_sets(draw) -> tuple[np.ndarray, np.ndarray]:
    """Query positions [P, S] and key positions [P, T] (EMPTY_SLOT among the keys)."""
    rows, seq, keys = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 12))
    q = draw(st.lists(st.lists(POSITION, min_size=seq, max_size=seq), min_size=rows, max_size=rows))
    k = draw(st.lists(st.lists(KEY_POSITION, min_size=keys, max_size=keys), min_size=rows, max_size=rows))
    return np.array(q, dtype=np.int64), np.array(k, dtype=np.int64)


@given(MASKS, position_sets())
def test_visible_equals_the_golden(mask, positions):
    assert_same_as_golden(mask, *positions)


def test_prefill_static_cache_and_ring_buffer_positions():
    """The key-position layouts the backends produce, for windows and chunks 1..7."""
    q = np.array([[9, 10, 11]])  # a step of three queries
    layouts = {
        "prefill": np.arange(12)[None],
        "static cache with empty slots": np.array([[*range(12), EMPTY_SLOT, EMPTY_SLOT, EMPTY_SLOT]]),
        "ring buffer of 5 slots": np.array([[10, 11, 7, 8, 9]]),
        "left padding": np.array([[EMPTY_SLOT, EMPTY_SLOT, *range(10)]]),
    }
    rules = [Mask("causal")] + [Mask("sliding", window=w) for w in range(1, 8)] + \
        [Mask("chunked", chunk=c) for c in range(1, 8)]
    for k in layouts.values():
        for mask in rules:
            assert_same_as_golden(mask, q, k)


def test_empty_slots_are_never_visible():
    q = torch.tensor([[0, 5]])
    k = torch.tensor([[EMPTY_SLOT, 0, EMPTY_SLOT, 5]])
    for mask in (Mask("causal"), Mask("sliding", window=100), Mask("chunked", chunk=100)):
        shown = masks.visible(mask, q, k)[0, 0]  # [S, T]
        assert not shown[:, 0].any() and not shown[:, 2].any()
        assert shown.tolist() == [[False, True, False, False], [False, True, False, True]]


def test_sliding_window_edges():
    """W keys including the query's own: the key exactly W back is not seen."""
    q, k = torch.tensor([[7]]), torch.arange(8)[None]
    assert masks.visible(Mask("sliding", window=3), q, k)[0, 0, 0].nonzero().flatten().tolist() == [5, 6, 7]
    assert masks.visible(Mask("chunked", chunk=3), q, k)[0, 0, 0].nonzero().flatten().tolist() == [6, 7]
