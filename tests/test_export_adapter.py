"""`--impl onnx`: OnnxAdapter on a golden case through the suite's own runner (the full run is
`pytest conformance/ --impl onnx`)."""

from __future__ import annotations

import gc

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from lmref.conformance.adapters import load_adapter  # noqa: E402
from lmref.conformance.runner import NOT_SUPPORTED, PASS, run_check  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.export.onnx_adapter import OnnxAdapter, gc_paused  # noqa: E402


@pytest.fixture(scope="module")
def adapter():
    return OnnxAdapter()


def test_identity():
    loaded = load_adapter("onnx")
    assert isinstance(loaded.impl, OnnxAdapter)
    assert loaded.name == "onnx" and loaded.dtype == "float32"
    assert loaded.version.startswith(f"onnxruntime {ort.__version__} (CPUExecutionProvider")


def test_decode_case_passes_with_one_export(adapter):
    case = GoldenStore().load("mpt", "decode-b2-p5-n6")  # ALiBi, 6 heads
    results = {cap: run_check(case, adapter, cap) for cap in ("forward", "decode", "loss")}
    assert {cap: r.status for cap, r in results.items()} == {"forward": PASS, "decode": PASS, "loss": PASS}, \
        "\n".join(r.message for r in results.values())
    assert results["decode"].metrics["nmse"] < 1e-11
    assert adapter.exports == 1  # one graph per (config, weights), reused by every capability


def test_capture_is_not_supported(adapter):
    case = GoldenStore().load("mpt", "prefill-b2-s7")
    assert run_check(case, adapter, "capture").status == NOT_SUPPORTED


def test_the_collector_pauses_for_a_session_and_comes_back_as_it_was():
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("an export that fails")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the caller's choice stands
    finally:
        gc.enable()
