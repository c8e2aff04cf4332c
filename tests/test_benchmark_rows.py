"""The GPU rows' decoding loop (benchmarks/bench_onnx.py `cuda_rows`: onnx_loops.BoundDecoder over a
CUDA session, behind `decoding`) run on the CPU provider,
so that a mistake in it is found here and not in a scarce GPU lease: its greedy tokens are
impl_torch's, and its batch prefill runs.  (It once bound a past and a mask of batch 1 to a
batch-4 prompt, which onnxruntime refuses.)  No timing is asserted."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from lmref.export.exporter import export_onnx  # noqa: E402
from lmref.export.runtime import CPU, open_session  # noqa: E402
from lmref.impl_torch import Transformer  # noqa: E402
from lmref.spec.params import init_params  # noqa: E402
from lmref.spec.presets import tiny  # noqa: E402
from tests.benchmark_scripts import import_benchmark  # noqa: E402


@pytest.fixture(scope="module")
def bench_onnx():
    return import_benchmark("bench_onnx")


def test_the_gpu_rows_loop_decodes_impl_torchs_tokens_and_prefills_a_batch(bench_onnx, tmp_path):
    config = tiny("llama3")
    params = init_params(config, 0)
    path = export_onnx(config, params, tmp_path / "ours")
    batch_prompt = np.random.default_rng(0).integers(0, config.vocab_size, (3, 7))  # [B, P]
    ours = bench_onnx.decoding("ours", bench_onnx.BoundDecoder(open_session(path, CPU), config, device="cpu"),
                               batch_prompt)
    torch_eager = bench_onnx.eager(Transformer.from_canonical(config, params).eval(), batch_prompt)
    tokens = ours.generate(6)
    assert len(tokens) == 6
    assert tokens == torch_eager.generate(6)
    ours.prefill()  # the whole batch from an empty past of its batch
