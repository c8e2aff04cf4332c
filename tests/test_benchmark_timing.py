"""benchmarks/timing.py `alternating`, the timer of every side-by-side ratio: the order of the
calls, the inputs each gets, and the per-round ratios (on recorded times; nothing here asserts
on how long anything took)."""

from __future__ import annotations

import pytest

from tests.benchmark_scripts import import_benchmark

timing = import_benchmark("timing")
Alternated, alternating = timing.Alternated, timing.alternating


def test_contenders_take_turns_block_by_block_with_the_same_inputs() -> None:
    calls = []
    contenders = {"ours": lambda x: calls.append(("ours", x)), "peer": lambda x: calls.append(("peer", x))}
    times = alternating(contenders, rounds=2, per_block=2, inputs=["a", "b", "c", "d"])
    assert calls == [("ours", "a"), ("ours", "b"), ("peer", "a"), ("peer", "b"),
                     ("ours", "c"), ("ours", "d"), ("peer", "c"), ("peer", "d")]
    assert {name: len(t) for name, t in times.times.items()} == {"ours": 4, "peer": 4}


def test_contenders_without_inputs_are_called_without_arguments() -> None:
    calls = []
    alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b"] * 3


def test_too_few_inputs_are_refused_before_any_call() -> None:
    calls = []
    with pytest.raises(ValueError, match="2 rounds of 2 calls need 4 inputs, got 3"):
        alternating({"a": calls.append}, rounds=2, per_block=2, inputs=[1, 2, 3])
    assert calls == []


def test_medians_and_block_ratios_of_recorded_times() -> None:
    times = Alternated({"ours": [1.0, 3.0, 2.0, 2.0, 10.0, 2.0], "peer": [2.0, 2.0, 4.0, 4.0, 4.0, 4.0]}, per_block=2)
    assert times.medians() == {"ours": 2.0, "peer": 4.0}
    assert times.block_ratios("peer", "ours") == [1.0, 2.0, 4.0 / 6.0]  # block medians: ours 2, 2, 6
