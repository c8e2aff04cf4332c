"""Issue 10, item 5: the tolerance row comes from what the adapter declares (float32 when it
declares nothing), never from the dtype it returns; the report shows the tightest row each
check and each arch meets, so a bfloat16 pass never reads as a float32 pass."""

from __future__ import annotations

import warnings

import pytest

from lmref import impl_numpy
from lmref.conformance.adapters import as_adapter
from lmref.conformance.runner import FAIL, PASS, run_check
from lmref.conformance.store import GoldenStore
from tests import adapters_for_tests
from tests.test_conformance_plugin import ADAPTERS, run_suite, statuses


@pytest.fixture(scope="module")
def case():
    return GoldenStore().load("llama3", "prefill-b2-s7")


def test_an_undeclared_adapter_is_judged_by_the_float32_row_whatever_it_returns(case):
    """issue 10, item 5: a 1% error returned as bfloat16 by an adapter that declares no dtype
    is judged by the float32 row and FAILs; its tightest row met is bfloat16."""
    adapter = as_adapter(adapters_for_tests.bf16_one_percent_off)
    assert [adapter.row(d) for d in ("float64", "float32", "bfloat16", "float16", "")] == ["float32"] * 5
    result = run_check(case, adapter, "forward")
    assert result.status == FAIL, result.message
    assert result.metrics["dtype"] == "float32" and result.metrics["tightest_row"] == "bfloat16"
    assert "tolerance row float32, the default: the adapter declares no dtype" in result.message


def test_the_report_shows_the_row_and_the_tightest_row_met(tmp_path):
    """issue 10, item 5: through pytest, the same adapter FAILs every forward check under the
    float32 row; the header names the default row, the JSON gives the tightest row met per
    check, the console table per arch."""
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:bf16_one_percent_off")
    assert run.rc == 1, run.out
    assert statuses(run, "forward") == [FAIL] * 4
    assert "lmref tolerance row: float32 (the default: the adapter declares no dtype)" in run.out
    assert run.report["dtype"] == "float32" and run.report["dtype_declared"] is False
    for r in run.results(capability="forward"):
        assert (r["metrics"]["dtype"], r["metrics"]["tightest_row"]) == ("float32", "bfloat16")
    assert run.table_row("llama3")[-1] == "bfloat16"
    assert run.report["summary"]["tightest_row"] == {"llama3": "bfloat16"}


def test_a_declared_bfloat16_pass_reads_as_bfloat16(tmp_path):
    """issue 10, item 5: a bfloat16 adapter that passes its row shows bfloat16 as the tightest
    row met, never float32; the float64 golden shows float64."""
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:DeclaredBf16OnePercentOff",
                    "-k", "test_forward")
    assert run.rc == 0, run.out
    assert statuses(run, "forward") == [PASS] * 4
    assert {r["metrics"]["tightest_row"] for r in run.results(capability="forward")} == {"bfloat16"}
    assert run.table_row("llama3")[-1] == "bfloat16"
    assert "lmref tolerance row: bfloat16 (declared by the adapter)" in run.out


def test_tightest_row_of_correct_implementations(case):
    """issue 10, item 5: the golden meets float64 on every check; a correct float32 port meets
    float32 on logits and loss."""
    golden = as_adapter(adapters_for_tests.forward_only)
    assert run_check(case, golden, "forward").metrics["tightest_row"] == "float64"
    float32 = as_adapter(adapters_for_tests.Float32Numpy)
    for capability in ("forward", "loss", "capture"):
        result = run_check(case, float32, capability)
        assert result.status == PASS and result.metrics["tightest_row"] == "float32", capability


def test_a_capture_with_a_nan_meets_no_row(case):
    """A NaN in a captured component that is not the first compared FAILs and meets no row: the
    worst nmse is NaN, which no row admits (Python's max would have skipped it)."""
    result = run_check(case, as_adapter(adapters_for_tests.CapturesANaN), "capture")
    assert result.status == FAIL and "first diverging component: layers.0.mlp (nmse nan (non-finite values) > " \
        in result.message  # the value was NaN (or inf): not an nmse that came out NaN
    assert result.metrics["tightest_row"] is None


def test_the_tightest_row_agrees_with_the_gates(case):
    """issue 10, item 5: `rows_met` (behind the tightest row) gives exactly the rows whose gates
    `gate(compare(...))` pass, from noise every row admits to noise none does."""
    import numpy as np

    from lmref.conformance.metrics import compare, gate, rows_met
    from lmref.conformance.tolerances import Tolerances

    rows = Tolerances().all_rows()
    ref = case.expected["logits"]
    rng = np.random.default_rng(0)
    seen = set()
    for scale in (0.0, 1e-9, 1e-6, 1e-3, 3e-2, 0.3, 3.0):
        out = ref + rng.normal(0.0, scale, ref.shape)
        expected = [name for name, tol in rows.items() if not gate(compare(out, ref, tol), tol)]
        assert rows_met(out, ref, rows) == expected, scale
        seen.add(tuple(expected))
    assert len(seen) >= 4  # the noise levels reach several rows, down to none


def test_logits_too_large_to_square_fail_under_warnings_as_errors(case):
    """Logits of 1e200 overflow the squares of nmse: a FAIL (nmse inf) even where a CI's
    `-W error::RuntimeWarning` turns NumPy's overflow warning into an exception."""
    adapter = as_adapter(lambda config, params, tokens: impl_numpy.forward(config, params, tokens) * 1e200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = run_check(case, adapter, "forward")
    assert result.status == FAIL and "nmse inf > " in result.message, result.message
