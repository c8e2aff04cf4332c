"""Issue 10, items 6 and 17 (--report-json): options that would test nothing, or fail only
after the whole run, are usage errors (exit 4) before anything runs."""

from __future__ import annotations

import json
import os

import pytest

from lmref.conformance.generate import generate
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


def test_report_json_naming_an_input_is_a_usage_error(tmp_path):
    """The report never takes the place of what the run reads: the golden store's manifest, a
    file inside the store, or a --tolerances file are refused before anything runs, unchanged."""
    from tests.test_conformance_plugin import _copy_store

    root = _copy_store(tmp_path)
    overrides = tmp_path / "tolerances.json"
    overrides.write_text('{"float32": {"nmse": 1e-8}}')
    manifest = (root / "MANIFEST.json").read_bytes()
    other = tmp_path / "other-store"  # not this run's input, yet a report inside breaks it as well
    generate(other, ["gpt2"], progress=lambda _: None)
    for target, problem in [(root / "MANIFEST.json", "lies inside the input"),
                            (root / "llama3" / "report.json", "lies inside the input"),
                            (overrides, "is the command's own input"),
                            (other / "report.json", f"lies inside {other}, a golden store")]:
        run = run_suite(tmp_path, "--arch", "llama3", "--golden-dir", str(root), "--tolerances", str(overrides),
                        "--report-json", str(target))
        assert run.rc == USAGE_ERROR, run.out
        assert f"--report-json {target}: {problem}" in run.out and "passed" not in run.out
    assert (root / "MANIFEST.json").read_bytes() == manifest
    assert overrides.read_text() == '{"float32": {"nmse": 1e-8}}'
    assert not (root / "llama3" / "report.json").exists() and not (other / "report.json").exists()


def test_report_json_replaces_no_file_of_the_users(tmp_path):
    """An existing file at the report's path is replaced only when it is empty or an earlier
    conformance report: not an adapter's source, nor a hard link to the store's manifest (the
    same file by another name), which stay as they were; the report is moved into place whole."""
    from tests.test_conformance_plugin import _copy_store

    root = _copy_store(tmp_path)
    manifest = (root / "MANIFEST.json").read_bytes()
    linked = tmp_path / "linked.json"
    os.link(root / "MANIFEST.json", linked)
    source = tmp_path / "my_adapter.py"
    source.write_text("class Adapter: ...\n")
    for target in (linked, source):
        run = run_suite(tmp_path, "--arch", "llama3", "--golden-dir", str(root), "--report-json", str(target))
        assert run.rc == USAGE_ERROR, run.out
        assert f"--report-json {target}: the file exists and is not an earlier 'lmref-conformance-report'" in run.out
        assert "passed" not in run.out
    assert (root / "MANIFEST.json").read_bytes() == manifest and source.read_text() == "class Adapter: ...\n"
    target = tmp_path / "report.json"
    target.touch()
    for _ in range(2):  # an empty file, then the report it became
        run = run_suite(tmp_path, "--arch", "gpt2", "--report-json", str(target), "-k", "prefill-b2-s7")
        assert run.rc == 0 and json.loads(target.read_text())["summary"]["total"] == 3, run.out
    assert not list(tmp_path.glob(".report.json.tmp-*"))


def test_a_usage_error_leaves_no_folder_for_the_report(tmp_path):
    """Checking --report-json makes none of its missing folders; the report's write does."""
    target = tmp_path / "new" / "deeper" / "report.json"
    run = run_suite(tmp_path, "--arch", "nosuch", "--report-json", str(target))
    assert run.rc == USAGE_ERROR and "unknown arch 'nosuch'" in run.out, run.out
    assert not (tmp_path / "new").exists()
    run = run_suite(tmp_path, "--arch", "gpt2", "--report-json", str(target))
    assert run.rc == 0 and target.is_file(), run.out


@pytest.mark.parametrize("option", ["--golden-dir", "--tolerances"])
def test_an_empty_golden_dir_or_tolerances_is_a_usage_error(tmp_path, option):
    """`--golden-dir "$UNSET"` must not test against the package's store unasked, nor
    `--tolerances "$UNSET"` read the working directory."""
    run = run_suite(tmp_path, "--arch", "llama3", option, "")
    assert run.rc == USAGE_ERROR, run.out
    assert f"{option} is empty" in run.out and "passed" not in run.out


def test_a_report_lost_after_the_run_is_said_after_the_table_not_announced(tmp_path):
    """A disk that fills up when the report is written: the error takes the place of the
    "JSON report:" line under the table, and the run exits 3 (pytest's internal error)."""
    (tmp_path / "full_disk.py").write_text(
        "import lmref.conformance.report as report\n\n\n"
        "def pytest_configure(config):\n"
        "    def full(path, text):\n"
        "        raise OSError(28, 'No space left on device')\n\n"
        "    report.write_report_file = full\n")
    run = run_suite(tmp_path, "--arch", "gpt2", "-k", "prefill-b2-s7", "-p", "full_disk", pythonpath=(str(tmp_path),))
    assert run.rc == 3, run.out
    lines = run.out.splitlines()
    error = f"lmref: error: --report-json {tmp_path / 'report.json'}: could not be written (No space left on device)"
    assert error in lines and lines[lines.index(error) - 1].startswith("3 checks: 3 PASS")
    assert "JSON report:" not in run.out


def test_report_json_ending_in_a_slash_is_a_directory_though_none_exists(tmp_path):
    """`--report-json out/` means a folder: refused, not written as a file named `out`."""
    from lmref.spec.errors import OutputError
    from lmref.spec.outputs import CONFORMANCE_REPORT_FORMAT, check_report_file

    with pytest.raises(OutputError, match="new/: is a directory; give the path of a file to write"):
        check_report_file(f"{tmp_path}/new/", [], CONFORMANCE_REPORT_FORMAT)
    assert list(tmp_path.iterdir()) == []
