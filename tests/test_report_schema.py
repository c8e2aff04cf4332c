"""The --report-json schema (conformance/report.schema.json, issue 15 item 4): real reports of
every kind validate against it, and it is strict enough to refuse what a report never holds."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

from lmref.conformance.report import REPORT_FORMAT, REPORT_FORMAT_VERSION  # noqa: E402
from tests.test_conformance_plugin import ADAPTERS, run_suite  # noqa: E402

SCHEMA = json.loads((Path(__file__).parents[1] / "conformance" / "report.schema.json").read_text())
# Between them these runs hold every status but SKIPPED, every capability, every kind of
# metrics (logits, loss, capture, capture counts only, routing, none) and run overrides.
RUNS = {
    "golden, a mixture and an override": ("--arch", "gpt2,mixtral-8x7b", "--tolerance", "float64.nmse=1e-20"),
    "a subtle bug": ("--arch", "gpt2", "--impl", f"{ADAPTERS}:WrongSecondMlp"),
    "a crash and a missing method": ("--arch", "llama3", "--impl", f"{ADAPTERS}:CrashOnBatch3"),
    "NaN logits": ("--arch", "llama3", "--impl", f"{ADAPTERS}:forward_nan"),
    "captures of some components": ("--arch", "llama3", "--impl", f"{ADAPTERS}:CapturesSome"),
    "captures of logits only": ("--arch", "llama3", "--impl", f"{ADAPTERS}:CapturesLogitsOnly"),
    "captures under unknown names": ("--arch", "llama3", "--impl", f"{ADAPTERS}:CapturesUnknownNames"),
}


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    found = {}
    for name, args in RUNS.items():
        run = run_suite(tmp_path_factory.mktemp("run"), *args)
        assert run.report is not None, run.out
        found[name] = run.report
    return found


def validator():
    cls = jsonschema.validators.validator_for(SCHEMA)
    cls.check_schema(SCHEMA)
    return cls(SCHEMA)


def test_the_schema_is_the_version_the_reports_write():
    assert SCHEMA["properties"]["format"]["const"] == REPORT_FORMAT
    assert SCHEMA["properties"]["format_version"]["const"] == REPORT_FORMAT_VERSION


def test_every_kind_of_report_validates(reports):
    check = validator()
    for name, report in reports.items():
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(report)]
        assert not errors, f"{name}: {errors[:3]}"
    unknown = [r for r in reports["captures under unknown names"]["results"] if r["capability"] == "capture"]
    assert [(r["status"], r["metrics"]) for r in unknown] == [
        ("FAIL", {"components_compared": 0, "components_expected": 9})] * 2
    results = [r for report in reports.values() for r in report["results"]]
    assert {r["status"] for r in results} == {"PASS", "NOT SUPPORTED", "FAIL", "ERROR"}
    assert {r["capability"] for r in results} == {"forward", "decode", "loss", "capture", "routing"}
    kinds = {frozenset(r["metrics"]) & {"nmse", "abs_err", "first", "flipped", "components_compared"}
             for r in results}
    assert {frozenset(), frozenset({"nmse"}), frozenset({"abs_err"}), frozenset({"components_compared"}),
            frozenset({"nmse", "first", "components_compared"}), frozenset({"flipped"})} <= kinds


@pytest.mark.parametrize("change, where", [
    (lambda r: r.update(unknown_key=1), "an unknown top-level key"),
    (lambda r: r["results"][0].update(status="OK"), "a status that does not exist"),
    (lambda r: r["results"][0].update(capability="generate"), "a capability that does not exist"),
    (lambda r: r["results"][0]["metrics"].update(new_metric=0.0), "a metric the schema does not name"),
    (lambda r: r["results"][0]["metrics"].pop("tightest_row"), "a compared check without its tightest row"),
    (lambda r: r["summary"].pop("exit_status"), "a summary without the exit status"),
    (lambda r: r.update(dtype="float8"), "a row that does not exist"),
    (lambda r: r.update(format_version=2), "another version"),
])
def test_the_schema_refuses_what_a_report_never_holds(reports, change, where):
    report = copy.deepcopy(reports["golden, a mixture and an override"])
    assert report["results"][0]["metrics"], "the first result is a compared check"
    change(report)
    assert list(validator().iter_errors(report)), where
