"""Issue 10, items 6 and 17 (--report-json): options that would test nothing, or fail only
after the whole run, are usage errors (exit 4) before anything runs."""

from __future__ import annotations

import pytest

from tests.test_conformance_plugin import USAGE_ERROR, run_suite


def test_an_empty_impl_is_a_usage_error(tmp_path):
    """issue 10, item 6: `--impl ""` (an unset shell variable) must not test the golden
    against itself; it is a usage error naming the problem."""
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", "")
    assert run.rc == USAGE_ERROR, run.out
    assert "--impl is empty" in run.out and "passed" not in run.out


@pytest.mark.parametrize("value", ["", " "], ids=["empty", "blank"])
def test_an_empty_lmref_impl_is_a_usage_error(tmp_path, value):
    """issue 10, item 6: an empty $LMREF_IMPL is refused for the same reason."""
    run = run_suite(tmp_path, "--arch", "llama3", env={"LMREF_IMPL": value})
    assert run.rc == USAGE_ERROR, run.out
    assert "$LMREF_IMPL is set but empty" in run.out and "passed" not in run.out


def test_report_json_naming_a_directory_is_a_usage_error(tmp_path):
    """issue 10, item 17: --report-json DIR is refused before any test runs, not a traceback
    at the end."""
    run = run_suite(tmp_path, "--arch", "llama3", "--report-json", str(tmp_path))
    assert run.rc == USAGE_ERROR, run.out
    assert f"--report-json {tmp_path}: is a directory" in run.out
    assert "passed" not in run.out and "Traceback" not in run.out


def test_report_json_in_an_unwritable_place_is_a_usage_error(tmp_path):
    """issue 10, item 17: a --report-json whose folder cannot be made (a file is in the way) is
    refused before any test runs."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "report.json"
    run = run_suite(tmp_path, "--arch", "llama3", "--report-json", str(target))
    assert run.rc == USAGE_ERROR, run.out
    assert f"--report-json {target}: cannot be written" in run.out
    assert "passed" not in run.out and "Traceback" not in run.out
    assert blocker.read_text() == "not a folder"
