"""`lmref report`: a --report-json file read back (its table, counts and failures), and two runs
compared check by check (regressed, gone, fixed, new; exit 1 on a regression)."""

from __future__ import annotations

import copy
import json

import pytest

from lmref.cli import main
from lmref.conformance.report import REPORT_FORMAT, REPORT_FORMAT_VERSION, cell
from tests.test_conformance_plugin import ADAPTERS, run_suite

ARCHS = ("--arch", "gpt2,llama3")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """{"good": the golden's own run, "bad": WrongSecondMlp's}: (path, report)."""
    found = {}
    for name, extra in (("good", ()), ("bad", ("--impl", f"{ADAPTERS}:WrongSecondMlp"))):
        directory = tmp_path_factory.mktemp(name)
        run = run_suite(directory, *ARCHS, *extra)
        found[name] = (directory / "report.json", run.report)
    return found


def write(tmp_path, name: str, report: dict):
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


def report_cli(capsys, *paths) -> tuple[int, str, str]:
    status = main(["report", *map(str, paths)])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_the_report_names_its_format_and_version(runs):
    report = runs["good"][1]
    assert (report["format"], report["format_version"]) == (REPORT_FORMAT, REPORT_FORMAT_VERSION) == (
        "lmref-conformance-report", 1)


def test_one_report_prints_its_table_counts_and_failures(runs, capsys):
    path, report = runs["bad"]
    status, out, _ = report_cli(capsys, path)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("wrong-second-mlp (") and "float64 row" in lines[0]
    assert lines[1].split() == ["arch", "forward", "decode", "loss", "capture", "tightest", "row"]
    assert lines[2].split()[:3] == ["gpt2", "FAIL", "4"]
    assert "22 checks: 0 PASS, 10 NOT SUPPORTED, 12 FAIL, 0 ERROR" in lines
    failures = [line for line in lines if line.startswith("FAIL ")]
    assert len(failures) == 12 == report["summary"]["counts"]["FAIL"]
    # every case names the component: the long and decode cases from captures computed on the spot
    for line in failures:
        assert "first diverging component: layers.1.mlp" in line, line


def test_a_regression_exits_1_and_a_fix_exits_0(runs, capsys):
    good, bad = runs["good"][0], runs["bad"][0]
    status, out, _ = report_cli(capsys, good, bad)
    assert status == 1
    assert "regressed gpt2/prefill-b2-s7 forward: PASS -> FAIL" in out
    assert "regressed llama3/decode-b2-p5-n6 loss: PASS -> NOT SUPPORTED" in out
    assert "note: the runs differ in impl: 'numpy'" in out
    assert out.splitlines()[-1] == "22 regressed or gone, 0 fixed, 0 new, 0 unchanged"
    status, out, _ = report_cli(capsys, bad, good)
    assert status == 0 and out.splitlines()[-1] == "0 regressed or gone, 22 fixed, 0 new, 0 unchanged"
    status, out, _ = report_cli(capsys, good, good)
    assert status == 0 and out == "0 regressed or gone, 0 fixed, 0 new, 22 unchanged\n"


def test_a_check_the_new_run_lost_is_a_regression_and_one_it_gained_is_new(runs, tmp_path, capsys):
    good = runs["good"][1]
    fewer = copy.deepcopy(good)
    lost = fewer["results"].pop(0)  # and the summary as that run would have written it:
    fewer["summary"]["total"] -= 1
    fewer["summary"]["counts"]["PASS"] -= 1
    fewer["summary"]["table"][lost["arch"]][lost["capability"]] = cell(
        [r["status"] for r in fewer["results"] if (r["arch"], r["capability"]) == (lost["arch"], lost["capability"])])
    status, out, _ = report_cli(capsys, runs["good"][0], write(tmp_path, "fewer.json", fewer))
    assert status == 1
    assert f"gone      {lost['arch']}/{lost['case']} {lost['capability']}: PASS -> (none)" in out
    status, out, _ = report_cli(capsys, write(tmp_path, "fewer.json", fewer), runs["good"][0])
    assert status == 0 and f"new       {lost['arch']}/{lost['case']} {lost['capability']}: (none) -> PASS" in out


def test_a_report_from_before_the_format_was_named_reads_alike(runs, tmp_path, capsys):
    old = {k: v for k, v in runs["good"][1].items() if k not in ("format", "format_version")}
    status, out, _ = report_cli(capsys, write(tmp_path, "v0.json", old), runs["good"][0])
    assert status == 0 and out.endswith("22 unchanged\n")


@pytest.mark.parametrize("content, expected", [
    ("not json", "is not JSON"),
    ("[]", "is not a conformance report"),
    ('{"results": [], "summary": {}, "format": "other"}', "format 'other' version None; this lmref reads"),
    ('{"results": [], "summary": {}, "format_version": 7}', "version 7; this lmref reads"),
    ('{"results": [{"arch": "gpt2"}], "summary": {}}', "results[0] lacks case, capability, status"),
    ('{"results": [{"arch": "a", "case": "c", "capability": "forward", "status": "OK"}], "summary": {}}',
     "results[0] has status 'OK', not one of PASS"),
    ('{"results": [], "summary": null}', "summary must be an object"),
    ('{"results": [], "summary": {"counts": null}}', "summary must be an object whose counts"),
    ('{"results": [], "summary": {}, "case_tolerance_overrides": "x"}', "(and case_tolerance_overrides an object)"),
])
def test_a_file_that_is_not_a_report_is_refused_naming_it(content, expected, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(content)
    status, out, err = report_cli(capsys, path)
    assert status == 2 and out == ""
    assert err.startswith(f"lmref report: error: {path}: ") and expected in err
    assert path.read_text() == content and sorted(tmp_path.iterdir()) == [path]


def test_a_missing_file_and_three_files_are_usage_errors(runs, tmp_path, capsys):
    status, _, err = report_cli(capsys, tmp_path / "none.json")
    assert status == 2 and f"{tmp_path / 'none.json'}: cannot be read" in err
    good = runs["good"][0]
    status, _, err = report_cli(capsys, good, good, good)
    assert status == 2 and "takes one report or two (OLD NEW), got 3" in err


def test_a_custom_store_and_its_loosened_cases_are_shown_and_compared(runs, tmp_path, capsys):
    """A run against a custom golden store whose case loosens its rows reads as such, as the
    suite's header has it; two runs that differ in it are not like for like."""
    _, report = runs["good"]
    custom = copy.deepcopy(report) | {"golden_store": "custom", "golden_dir": "/stores/mine",
                                      "case_tolerance_overrides": {"gpt2/prefill-b2-s7": {"float64": {"nmse": 1.0}}}}
    status, out, _ = report_cli(capsys, write(tmp_path, "custom.json", custom))
    lines = out.splitlines()
    assert status == 0 and lines[0].endswith(f"custom golden store /stores/mine (manifest {report['golden_version']})")
    assert lines[1] == 'case tolerance overrides: gpt2/prefill-b2-s7 {"float64": {"nmse": 1.0}}'
    status, out, _ = report_cli(capsys, write(tmp_path, "release.json", report), tmp_path / "custom.json")
    assert "golden_store: 'release' -> 'custom'" in out and "case_tolerance_overrides: {} -> {" in out


def test_an_error_and_an_invalid_result_are_shown_by_their_cause(tmp_path, capsys):
    """The line under the table is the reason the heading gives, not the repro or the traceback
    header after it."""
    for impl, line in [("CrashOnBatch3", "ERROR llama3/prefill-b3-s13 forward: crash-on-batch-3.forward raised "
                                         "RuntimeError: simulated crash on batch 3"),
                       ("forward_nan", "FAIL llama3/prefill-b2-s7 forward: invalid result: forward returned 1 "
                                       "non-finite values of 3514 (1 NaN, 0 inf)")]:
        run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:{impl}")
        status, out, _ = report_cli(capsys, tmp_path / "report.json")
        assert status == 0 and any(printed.startswith(line) for printed in out.splitlines()), out


def test_a_run_that_compared_nothing_exits_5_and_its_report_says_so(tmp_path, capsys):
    """Every check NOT SUPPORTED: nothing was verified, so the run does not pass (exit 5, pytest's
    'no tests'), and `lmref report` says why its table holds no PASS."""
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:ReportsHugePageAdvice")
    assert run.rc == 5 and "lmref: nothing was compared (every check NOT SUPPORTED or skipped)" in run.out, run.out
    assert run.report["summary"]["exit_status"] == 5
    status, out, _ = report_cli(capsys, tmp_path / "report.json")
    assert status == 0 and out.splitlines()[-1] == (
        "the run exited with status 5: nothing was compared (every check NOT SUPPORTED or skipped)")


def test_an_interrupted_run_is_not_shown_as_a_whole_one(runs, tmp_path, capsys):
    report = copy.deepcopy(runs["good"][1])
    report["summary"]["exit_status"] = 2  # Ctrl-C: pytest still writes what finished
    status, out, _ = report_cli(capsys, write(tmp_path, "cut.json", report))
    assert status == 0 and "the run exited with status 2: it was interrupted, and the checks it did not reach " \
        "are not in the report" in out


def _doctored(report: dict, change) -> dict:
    doctored = copy.deepcopy(report)
    change(doctored)
    return doctored


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["results"].insert(0, dict(r["results"][0], status="FAIL")),
     "results hold gpt2/prefill-b2-s7 forward more than once"),
    (lambda r: r["results"][0].update(status="FAIL"), "summary counts {'PASS': 22, "),
    (lambda r: r["summary"]["table"]["gpt2"].update(forward="PASS 5"),
     "summary table gpt2 forward: 'PASS 5', but its results give 'PASS 4'"),
])
def test_a_report_whose_summary_is_not_its_results_is_refused(runs, tmp_path, capsys, change, expected):
    """A duplicated check (whichever came last would win the comparison) or a summary that is not
    what the results give (an all-PASS table over a FAIL) is not shown or compared as a run."""
    path = write(tmp_path, "doctored.json", _doctored(runs["good"][1], change))
    for files in ([path], [runs["good"][0], path]):
        status, out, err = report_cli(capsys, *files)
        assert status == 2 and out == "" and f"{path}: {expected}" in err, err


def test_a_run_that_loosened_its_rows_says_so_everywhere_and_in_strict_json(runs, tmp_path, capsys):
    """Gates switched off with --tolerance ... =inf turn the broken model's FAILs into PASSes:
    the terminal, the report's first line and a comparison with the strict run all name the
    overrides (never a plain float32 pass, never a plain "fixed"), and the file is strict JSON."""
    off = ["--tolerance", "float64.nmse=inf", "--tolerance", "float64.atol=inf", "--tolerance", "float64.kl=inf",
           "--tolerance", "float64.top1=0", "--tolerance", "float64.loss_atol=inf"]
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:WrongSecondMlp", *off)
    assert run.rc == 0, run.out
    overrides = '{"float64": {"nmse": Infinity, "atol": Infinity, "kl": Infinity, "top1": 0.0, "loss_atol": Infinity}}'
    assert f"lmref: judged with this run's tolerance overrides: {overrides}" in run.out
    text = (tmp_path / "report.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"the report holds {name}, which strict JSON has not"))
    assert run.report["tolerance_overrides"]["float64"] == {"nmse": "inf", "atol": "inf", "kl": "inf", "top1": 0.0,
                                                            "loss_atol": "inf"}
    status, out, _ = report_cli(capsys, tmp_path / "report.json")
    assert out.splitlines()[0].endswith(f"; run overrides: {json.dumps(run.report['tolerance_overrides'])}")
    status, out, _ = report_cli(capsys, runs["bad"][0], tmp_path / "report.json")
    assert "tolerance_overrides: {} -> {'float64': {" in out and " fixed" in out
