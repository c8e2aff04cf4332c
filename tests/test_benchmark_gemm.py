"""benchmarks/bench_gemm.py: the GEMMs it times are exactly a training step's (every matrix a
matmul reads, three products each), and its two libraries agree before they are timed.
Nothing here asserts on how long anything took."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from tests.benchmark_scripts import import_benchmark  # noqa: E402

bench_gemm = import_benchmark("bench_gemm")
bench_train = import_benchmark("bench_train")


@pytest.mark.parametrize("size, tables_not_multiplied", [("tiny", ("embed.tokens",)),
                                                           ("gpt2-10m", ("embed.positions",))])
def test_the_gemms_cover_every_matrix_a_step_multiplies_by(size, tables_not_multiplied) -> None:
    case = bench_train.cpu_case(size)
    shapes = bench_gemm.param_shapes(case.config)
    matrices = sum(math.prod(shape) for name, shape in shapes.items()
                   if len(shape) == 2 and name not in tables_not_multiplied)
    gemms = bench_gemm.step_gemms(size)
    assert {tokens for tokens, _, _ in gemms} == {case.batch * case.seq}
    assert sum(n_in * n_out for _, n_in, n_out in gemms) == matrices


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_both_libraries_agree_and_run_the_whole_step() -> None:
    runs = bench_gemm.contenders(bench_gemm.step_gemms("tiny"))  # checks the three products agree
    assert set(runs) == {"mkl", "onednn"}
    for run in runs.values():
        run()
