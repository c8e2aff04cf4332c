"""benchmarks/bench_train.py `--profile`: each side's CPU time split into matmuls, attention and
the rest, and the ceiling of lmref / HF computed from the peer's split.  The split goes by
torch's kernel names, so this checks on the smallest case that each bucket finds its kernels
on both sides (a renamed kernel would move into "rest" and inflate the ceiling).  Nothing here
asserts on how long anything took."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.benchmark_scripts import import_benchmark  # noqa: E402

bench_train = import_benchmark("bench_train")


def test_every_bucket_finds_its_kernels_on_both_sides() -> None:
    seconds = bench_train.profile(bench_train.cpu_case("tiny"), steps=1, warmup=1)
    assert set(seconds) == {"ours", "peer"}
    for side in seconds.values():
        assert set(side) == {"matmuls", "attention", "rest"}
        assert all(value > 0 for value in side.values()), side


def test_the_ceiling_is_the_peers_total_over_its_matmuls_and_attention() -> None:
    assert bench_train.ceiling({"matmuls": 3.0, "attention": 1.0, "rest": 1.0}) == 1.25
    row = bench_train.profile_row(bench_train.cpu_case("tiny"), {
        "ours": {"matmuls": 3.0, "attention": 1.0, "rest": 0.5},
        "peer": {"matmuls": 3.0, "attention": 1.0, "rest": 1.0}})
    assert row == "| llama3-tiny | 4.50, 3.00, 1.00, 0.50 | 5.00, 3.00, 1.00, 1.00 | 1.25 |"
