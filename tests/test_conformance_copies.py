"""conformance/copies.py: every adapter call gets arrays equal to the shared weights, reused
while unwritten, copied afresh once written into, made read-only, or when the weights change."""

from __future__ import annotations

import numpy as np

from lmref.conformance.copies import WeightCopies


def _weights() -> dict[str, np.ndarray]:
    return {"a": np.arange(6.0).reshape(2, 3), "b": np.ones(4)}


def test_unwritten_copies_are_handed_out_again_in_a_new_dict():
    weights, copies = _weights(), WeightCopies()
    first = copies.of(weights)
    assert all(first[k] is not weights[k] and np.array_equal(first[k], weights[k]) for k in weights)
    first["extra"] = np.zeros(1)  # the call's own dict
    second = copies.of(weights)
    assert second is not first and second.keys() == weights.keys()
    assert all(second[k] is first[k] for k in weights)


def test_copies_written_into_are_replaced():
    weights, copies = _weights(), WeightCopies()
    copies.of(weights)["a"][0, 0] = 99.0  # an adapter writing into its params
    again = copies.of(weights)
    assert again["a"][0, 0] == 0.0 and weights["a"][0, 0] == 0.0
    np.testing.assert_array_equal(again["a"], weights["a"])


def test_copies_made_read_only_are_replaced():
    """The next call may write into its params ("mutate them freely"), whatever the last did."""
    weights, copies = _weights(), WeightCopies()
    copies.of(weights)["b"].flags.writeable = False
    again = copies.of(weights)
    again["b"] *= 2.0
    np.testing.assert_array_equal(again["b"], 2.0 * weights["b"])


def test_other_or_changed_weights_get_fresh_copies():
    weights, copies = _weights(), WeightCopies()
    first = copies.of(weights)
    other = {k: v * 2 for k, v in weights.items()}
    np.testing.assert_array_equal(copies.of(other)["b"], other["b"])
    weights["b"][1] = 7.0  # the source itself written into between calls
    latest = copies.of(weights)
    assert latest["b"] is not first["b"] and latest["b"][1] == 7.0
