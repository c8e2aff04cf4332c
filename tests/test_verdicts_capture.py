"""Issue 10, item 9: the capture check says how many components it compared, and a capture
that compares nothing but the logits fails."""

from __future__ import annotations

import pytest

from lmref.conformance.runner import FAIL, PASS, run_check
from lmref.conformance.store import GoldenStore
from tests import adapters_for_tests
from tests.test_conformance_plugin import ADAPTERS, run_suite, statuses


@pytest.fixture(scope="module")
def case():
    return GoldenStore().load("llama3", "prefill-b2-s7")


def test_a_capture_of_only_the_logits_fails(case):
    """issue 10, item 9: returning only `logits` from capture compares no intermediate: FAIL."""
    result = run_check(case, adapters_for_tests.CapturesLogitsOnly(), "capture")
    assert result.status == FAIL, result.message
    assert "compared nothing but logits (1 of 9 components)" in result.message
    assert (result.metrics["components_compared"], result.metrics["components_expected"]) == (1, 9)


def test_a_partial_capture_passes_and_says_how_much_it_compared(case):
    """issue 10, item 9: a correct capture of 5 of the 9 components passes as
    "PASS (5 of 9 components)"; a full one as 9 of 9."""
    result = run_check(case, adapters_for_tests.CapturesSome(), "capture")
    assert (result.status, result.message) == (PASS, "PASS (5 of 9 components)")
    assert (result.metrics["components_compared"], result.metrics["components_expected"]) == (5, 9)
    full = run_check(case, adapters_for_tests.Float32Numpy(), "capture")
    assert (full.status, full.message) == (PASS, "PASS (9 of 9 components)")


def test_the_report_shows_the_component_counts(tmp_path):
    """issue 10, item 9: through pytest, the JSON results and the console table carry the
    counts; the logits-only capture FAILs."""
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:CapturesSome", "-k", "test_capture")
    assert run.rc == 0, run.out
    assert [r["message"] for r in run.results(capability="capture")] == ["PASS (5 of 9 components)"] * 2
    assert run.table_row("llama3")[4] == "PASS 2 (5 of 9 components)"
    only = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:CapturesLogitsOnly", "-k", "test_capture")
    assert only.rc == 1, only.out
    assert statuses(only, "capture") == [FAIL, FAIL]
    assert "compared nothing but logits" in only.out


def test_names_the_golden_has_not_are_named_not_silently_ignored(case, tmp_path):
    """A capture under wrong names compares less than it seems to: the message lists the names,
    the table says how many, and a forward FAIL's diagnosis lists them too."""
    from lmref.conformance.metrics import locate_divergence

    result = run_check(case, adapters_for_tests.CapturesSomeUnderWrongNames(), "capture")
    assert (result.status, result.message) == (PASS, (
        "PASS (5 of 9 components); captured under names the golden does not have (ignored): model.layers.0.mlp, "
        "model.layers.1.attn, model.layers.1.mlp, model.layers.1.out"))
    embed = case.captures["embed"]
    d = locate_divergence({"a": embed}, {"a": embed, **{f"x{i}": embed for i in range(9)}}, 1e-9)
    assert d.describe().endswith("(ignored): x0, x1, x2, x3, x4, x5, x6, x7 and 1 more")
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:CapturesSomeUnderWrongNames", "-k",
                    "test_capture")
    assert run.rc == 0, run.out
    assert run.table_row("llama3")[4] == "PASS 2 (5 of 9 components, 4 unknown names)"

