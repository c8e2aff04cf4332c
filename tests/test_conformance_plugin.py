"""The conformance suite end to end: `pytest conformance/ ...` in a subprocess, with the
adapters of tests/adapters_for_tests.py, plus in-process checks of `run_check` and friends.

Every subprocess run is restricted to one or two archs (and often one case) to stay fast.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lmref import impl_numpy
from lmref.conformance.adapters import AdapterLoadError, as_adapter, load_adapter
from lmref.conformance.metrics import compare, gate, locate_divergence
from lmref.conformance.runner import FAIL, NOT_SUPPORTED, PASS, run_check
from lmref.conformance.store import DEFAULT_GOLDEN_DIR, GoldenStore
from lmref.conformance.tolerances import DEFAULT_ROWS, ToleranceError, Tolerances, build_tolerances
from tests import adapters_for_tests

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = "tests.adapters_for_tests"
USAGE_ERROR = 4  # pytest.ExitCode.USAGE_ERROR


@dataclass
class Run:
    rc: int
    out: str  # stdout and stderr together
    report: dict | None

    def results(self, **where) -> list[dict]:
        return [r for r in self.report["results"] if all(r[k] == v for k, v in where.items())]

    def table_row(self, arch: str) -> list[str]:
        line = next(line for line in self.out.splitlines() if line.startswith(f"{arch}  "))
        return re.split(r"\s{2,}", line.strip())


def run_suite(tmp_path: Path, *args: str, target: str = "conformance/", env: dict | None = None,
              pythonpath: tuple[str, ...] = ()) -> Run:
    """`python -m pytest TARGET ARGS --report-json ...` from the repository root; `env` adds
    variables, `pythonpath` folders ahead of the repository's."""
    report = tmp_path / "report.json"
    base = {k: v for k, v in os.environ.items() if k not in ("LMREF_IMPL", "PYTEST_ADDOPTS")}
    env = base | (env or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*pythonpath, str(REPO), base.get("PYTHONPATH")]))
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # hermetic, and a second faster per run
    command = [sys.executable, "-m", "pytest", target, "-p", "no:cacheprovider", "--report-json", str(report), *args]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return Run(proc.returncode, proc.stdout + proc.stderr, json.loads(report.read_text()) if report.exists() else None)


def statuses(run: Run, capability: str) -> list[str]:
    return [r["status"] for r in run.results(capability=capability)]


# --- whole runs ---------------------------------------------------------------------------------


def test_golden_numpy_passes_llama3(tmp_path):
    run = run_suite(tmp_path, "--arch", "llama3")
    assert run.rc == 0, run.out
    assert "lmref impl: numpy" in run.out and f"lmref golden set: {GoldenStore().version}" in run.out
    assert run.table_row("llama3") == ["llama3", "PASS 4", "PASS 1", "PASS 4", "PASS 2", "float64"]
    assert "11 checks: 11 PASS" in run.out
    assert "collected 11 items" in run.out  # no placeholder for routing, which no case of a dense arch has
    report = run.report
    assert (report["impl"], report["dtype"], report["archs"]) == ("numpy", "float64", ["llama3"])
    assert report["golden_version"] == GoldenStore().version and report["impl_version"]
    assert len(report["results"]) == 11 and {r["status"] for r in report["results"]} == {PASS}
    first = report["results"][0]
    assert set(first) == {"nodeid", "arch", "case", "capability", "status", "metrics", "message"}
    assert first["nodeid"] == "conformance/test_golden.py::test_forward[llama3-prefill-b2-s7]"
    assert {"max_abs", "max_rel", "nmse", "kl_max", "top1", "max_abs_index"} <= set(first["metrics"])
    assert report["summary"]["counts"] == {"PASS": 11, "NOT SUPPORTED": 0, "FAIL": 0, "ERROR": 0}
    assert report["summary"]["table"]["llama3"]["decode"] == "PASS 1"


def test_float32_positive_control_passes(tmp_path):
    run = run_suite(tmp_path, "--arch", "llama3,gpt2", "--impl", f"{ADAPTERS}:Float32Numpy")
    assert run.rc == 0, run.out
    assert run.report["dtype"] == "float32"
    assert len(run.report["results"]) == 22 and {r["status"] for r in run.report["results"]} == {PASS}
    assert {r["metrics"]["dtype"] for r in run.report["results"]} == {"float32"}
    # arch by arch, in --arch's order (conformance/order.py `arch_major`), each arch's case by case, each
    # case's capability by capability
    assert [r["arch"] for r in run.report["results"]] == ["llama3"] * 11 + ["gpt2"] * 11
    assert [(r["case"], r["capability"]) for r in run.results(arch="gpt2")] == [
        ("prefill-b2-s7", "forward"), ("prefill-b2-s7", "loss"), ("prefill-b2-s7", "capture"),
        ("prefill-b3-s13", "forward"), ("prefill-b3-s13", "loss"), ("prefill-b3-s13", "capture"),
        ("decode-b2-p5-n6", "forward"), ("decode-b2-p5-n6", "decode"), ("decode-b2-p5-n6", "loss"),
        ("long-b2-s160", "forward"), ("long-b2-s160", "loss")]


def test_parallel_run_merges_the_same_report_as_a_serial_one(tmp_path):
    """`-n 2` (pytest-xdist): the workers' results come back to one table and one JSON report,
    the same checks with the same metrics as a serial run, failures included."""
    args = ("--arch", "llama3,gpt2", "--impl", f"{ADAPTERS}:WrongSecondMlp")
    serial = run_suite(tmp_path / "serial", *args)
    parallel = run_suite(tmp_path / "parallel", *args, "-p", "xdist.plugin", "-n", "2")
    assert "2 workers" in parallel.out, parallel.out
    assert parallel.rc == serial.rc == 1, parallel.out
    def by_nodeid(run: Run) -> dict:
        return {r["nodeid"]: r for r in run.report["results"]}
    assert by_nodeid(parallel) == by_nodeid(serial) and len(by_nodeid(serial)) == 22
    assert parallel.report["summary"] == serial.report["summary"]
    assert FAIL in {r["status"] for r in serial.report["results"]}
    assert parallel.table_row("gpt2") == serial.table_row("gpt2")


def test_crashing_adapter_is_an_error_and_the_run_goes_on(tmp_path):
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:CrashOnBatch3")
    assert run.rc == 1
    [crashed] = run.results(capability="forward", case="prefill-b3-s13")
    assert crashed["status"] == "ERROR"
    assert "RuntimeError: simulated crash on batch 3" in crashed["message"]
    assert sorted(statuses(run, "forward")) == ["ERROR", PASS, PASS, PASS]
    assert statuses(run, "loss") == [PASS] * 4
    [decode] = run.results(capability="decode")
    assert decode["status"] == NOT_SUPPORTED and "no KV cache yet" in decode["message"]
    assert run.table_row("llama3") == ["llama3", "ERROR 1/4", "NOT SUPPORTED 1", "PASS 4", "NOT SUPPORTED 2", "none"]
    assert "ERROR at setup of test_forward[llama3-prefill-b3-s13]" in run.out


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


def raises_unprintable(config, params, tokens):
    raise Unprintable()


def test_an_exception_whose_str_raises_is_still_named_by_its_type(prefill_case):
    result = run_check(prefill_case, as_adapter(raises_unprintable), "forward")
    assert result.status == "ERROR", result.message
    assert "raises_unprintable.forward raised Unprintable: (its str() raised RuntimeError)" in result.message
    assert "in raises_unprintable" in result.message  # the adapter's frame


def test_forward_only_function_is_not_supported_elsewhere(tmp_path):
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:forward_only")
    assert run.rc == 0, run.out
    assert statuses(run, "forward") == [PASS] * 4
    for capability in ("decode", "loss", "capture"):
        assert set(statuses(run, capability)) == {NOT_SUPPORTED}, capability
    assert all(r["message"].startswith("NOT SUPPORTED:") for r in run.results(status=NOT_SUPPORTED))
    assert run.table_row("llama3") == ["llama3", "PASS 4", "NOT SUPPORTED 1", "NOT SUPPORTED 4", "NOT SUPPORTED 2",
                                       "float64"]
    assert "4 passed, 7 not supported" in run.out
    # issue 10, item 5: no declared dtype means the float32 row, whatever the results come back in
    assert (run.report["dtype"], run.report["dtype_declared"]) == ("float32", False)
    assert run.report["capabilities"] == ["forward"]


@pytest.mark.parametrize("adapter, expected", [
    ("forward_wrong_shape", ["returned shape (2, 7, 250), expected (2, 7, 251)"]),
    ("forward_nan", ["1 non-finite values", "1 NaN", "first at index [0, 2, 5]"]),
    ("forward_strings", ["returned a list", "dtype <U6", "expected a floating-point array"]),
    ("forward_none", ["forward returned None"]),
    ("forward_int", ["dtype int64", "expected a floating-point array"]),
])
def test_invalid_results_fail_with_a_clear_message(tmp_path, adapter, expected):
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:{adapter}", "-k", "test_forward and b2-s7")
    assert run.rc == 1, run.out
    [result] = run.report["results"]
    assert result["status"] == FAIL
    for text in expected:
        assert text in result["message"] and text in run.out, text


def test_failure_message_has_metrics_position_component_and_repro(tmp_path):
    nodeid = "conformance/test_golden.py::test_forward[llama3-prefill-b2-s7]"
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:WrongSecondMlp", target=nodeid)
    assert run.rc == 1 and "1 failed" in run.out, run.out
    for text in ("FAIL llama3/prefill-b2-s7 forward (tolerance row float64", "failed:", "> 1e-24", "metrics: max_abs",
                 "first bad position: batch 0, seq 0 (input token", "ref top-5:", "out top-5:",
                 "first diverging component: layers.1.mlp (nmse"):
        assert text in run.out, text
    repro = f'repro: python -m pytest "{nodeid}" --arch llama3 --impl {ADAPTERS}:WrongSecondMlp'
    assert repro in run.out and run.report["results"][0]["message"].endswith(repro)


# --- a broken golden store fails loudly ---------------------------------------------------------


def _copy_store(tmp_path: Path) -> Path:
    """A copy of the golden store with only llama3's files (the manifest still lists all)."""
    def only_llama3(directory: str, names: list[str]) -> list[str]:
        keep = ("MANIFEST.json", "llama3")
        return [n for n in names if n not in keep] if Path(directory) == DEFAULT_GOLDEN_DIR else []

    root = tmp_path / "golden"
    shutil.copytree(DEFAULT_GOLDEN_DIR, root, ignore=only_llama3)
    return root


def test_tampered_golden_file_is_a_loud_error(tmp_path):
    root = _copy_store(tmp_path)
    path = root / "llama3" / "prefill-b2-s7" / "expected.safetensors"
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01
    path.write_bytes(bytes(data))
    run = run_suite(tmp_path, "--arch", "llama3", "--golden-dir", str(root))
    assert run.rc == 1 and "skipped" not in run.out
    broken = run.results(case="prefill-b2-s7")
    assert [r["capability"] for r in broken] == ["forward", "loss", "capture"]
    for r in broken:
        assert r["status"] == "ERROR" and str(path) in r["message"] and "sha256" in r["message"]
    assert str(path) in run.out
    assert set(statuses(run, "decode")) == {PASS}  # the other cases still run


def test_missing_golden_file_is_a_loud_error(tmp_path):
    root = _copy_store(tmp_path)
    path = root / "llama3" / "decode-b2-p5-n6" / "inputs.safetensors"
    path.unlink()
    run = run_suite(tmp_path, "--arch", "llama3", "--golden-dir", str(root))
    assert run.rc == 1
    broken = run.results(case="decode-b2-p5-n6")
    assert {r["capability"] for r in broken} == {"forward", "decode", "loss"}
    assert all(r["status"] == "ERROR" and f"{path}: listed in MANIFEST.json but missing" in r["message"] for r in broken)


def test_unknown_golden_format_version_is_a_usage_error(tmp_path):
    root = _copy_store(tmp_path)
    manifest = json.loads((root / "MANIFEST.json").read_text())
    (root / "MANIFEST.json").write_text(json.dumps(manifest | {"format_version": 99}))
    run = run_suite(tmp_path, "--arch", "llama3", "--golden-dir", str(root))
    assert run.rc == USAGE_ERROR and "unknown golden format version 99" in run.out


@pytest.mark.parametrize("args, expected", [
    (["--arch", "nope"], ["unknown arch 'nope'", "llama3", "gpt2"]),
    (["--arch", "llama3", "--impl", "no_such_module:forward"], ["--impl no_such_module:forward", "cannot import module"]),
    (["--arch", "llama3", "--tolerance", "float99.nmse=1"], ["unknown dtype 'float99'"]),
])
def test_bad_options_are_usage_errors(tmp_path, args, expected):
    run = run_suite(tmp_path, *args)
    assert run.rc == USAGE_ERROR, run.out
    for text in expected:
        assert text in run.out, text


# --- in process: run_check, tolerances, metrics, adapters -----------------------------------------


@pytest.fixture(scope="module")
def prefill_case():
    return GoldenStore().load("llama3", "prefill-b2-s7")


def test_run_check_golden_passes_every_capability(prefill_case):
    adapter = load_adapter("numpy")
    for capability in ("forward", "loss", "capture"):
        result = run_check(prefill_case, adapter, capability)
        message = "PASS (9 of 9 components)" if capability == "capture" else ""  # issue 10, item 9
        assert (result.status, result.message) == (PASS, message), capability
    with pytest.raises(ValueError, match="has no decode check"):
        run_check(prefill_case, adapter, "decode")


def test_run_check_fails_a_plain_broken_function(prefill_case):
    def scaled(config, params, tokens):
        return impl_numpy.forward(config, params, tokens) * 1.0001

    result = run_check(prefill_case, scaled, "forward", Tolerances(), repro="pytest X")
    assert result.status == FAIL and "nmse" in result.message and result.message.endswith("repro: pytest X")
    # issue 10, item 5: a plain function declares no dtype, so the float32 row judges it
    assert result.metrics["dtype"] == "float32" and result.metrics["nmse"] > 1e-10
    assert run_check(prefill_case, scaled, "loss").status == NOT_SUPPORTED


def test_adapters_get_copies_of_the_params(prefill_case):
    adapter = as_adapter(adapters_for_tests.MutatesParams)
    assert [run_check(prefill_case, adapter, "forward").status for _ in range(2)] == [PASS, PASS]


def test_tolerance_overrides_case_then_run(prefill_case):
    tolerances = build_tolerances(assignments=["float32.nmse=1e-6"])
    row = tolerances.row("float32", {"float32": {"nmse": 1e-8, "kl": 1e-7}})
    assert (row.nmse, row.kl, row.atol) == (1e-6, 1e-7, DEFAULT_ROWS["float32"].atol)
    for bad, message in [("float32.nmse=-1", "non-negative"), ("float32.top1=2", r"\[0, 1\]"), ("nmse=1", "DTYPE.METRIC")]:
        with pytest.raises(ToleranceError, match=message):
            build_tolerances(assignments=[bad])
    with pytest.raises(ToleranceError, match="unknown metric float16.kll"):
        Tolerances().row("float16", {"float16": {"kll": 1.0}})
    with pytest.raises(ToleranceError, match="float32.nmse must be a number a float can hold, got an integer of 401"):
        Tolerances().row("float32", {"float32": {"nmse": 10**400}})  # a JSON file may hold such an integer


def test_a_tolerances_file_that_is_not_json_in_utf8_names_the_file(tmp_path):
    """A --tolerances file written as UTF-16 (PowerShell's `echo > file`), cut short or nested
    past Python's recursion limit is a ToleranceError naming it, never a traceback."""
    path = tmp_path / "tolerances.json"
    for data in ('{"float32": {"nmse": 1e-8}}'.encode("utf-16"), b'{"float32": {"nmse"', b"[" * 100_000):
        path.write_bytes(data)
        with pytest.raises(ToleranceError, match=f"--tolerances {path}: not valid JSON in UTF-8"):
            build_tolerances([str(path)])


def test_top1_gate_catches_a_swapped_argmax(prefill_case):
    ref = prefill_case.expected["logits"]
    out = ref.copy()
    top2 = np.argsort(out[1, 4])[-2:]
    out[1, 4, top2] = out[1, 4, top2[::-1]]  # swap the two best tokens at one position
    tol = DEFAULT_ROWS["float64"]
    m = compare(out, ref, tol)
    assert m.top1_mismatch == (1, 4) and m.top1_ref_token == int(top2[1]) and m.first_bad == (1, 4)
    assert any(f.startswith("top1") for f in gate(m, tol))
    assert gate(compare(ref, ref, tol), tol) == []


def test_locate_divergence_skips_missing_and_reports_misshaped(prefill_case):
    golden = prefill_case.captures
    captured = {"embed": golden["embed"], "layers.0.attn": golden["layers.0.attn"][:, :3],
                "layers.0.mlp": golden["layers.0.mlp"] * 1.01, "extra": np.zeros(3)}
    d = locate_divergence(golden, captured, threshold=1e-10)
    assert d.first == "layers.0.mlp" and d.first_nmse == pytest.approx(1e-4)
    assert d.misshaped == ["layers.0.attn: expected (2, 7, 128), got (2, 3, 128)"]
    assert "layers.1.out" in d.missing and d.unknown == ["extra"]


def test_adapter_dtype_row_and_environment(monkeypatch):
    undeclared = as_adapter(adapters_for_tests.forward_only)
    # issue 10, item 5: the declared row, else float32; never the dtype a result comes back in
    assert [undeclared.row(d) for d in ("float64", "float32", "bfloat16", "float16", "")] == ["float32"] * 5
    assert as_adapter(adapters_for_tests.Float32Numpy).row("float64") == "float32"
    monkeypatch.setenv("LMREF_IMPL", f"{ADAPTERS}:forward_only")
    assert load_adapter().spec == f"{ADAPTERS}:forward_only"
    monkeypatch.setenv("LMREF_IMPL", f"{ADAPTERS}:missing")
    with pytest.raises(AdapterLoadError, match=r"\$LMREF_IMPL .*has no attribute 'missing'"):
        load_adapter()
    with pytest.raises(AdapterLoadError, match=f"{ADAPTERS}:Float32Numpy has no attribute 'nope'$"):
        load_adapter(f"{ADAPTERS}:Float32Numpy.nope")  # the missing part named, not the whole path


def test_an_adapter_that_exits_or_raises_while_loading_is_a_load_error(tmp_path, monkeypatch):
    """In process too (`lmref verify` loads its adapter there): sys.exit at import or in the
    constructor, and a dtype property that raises, are AdapterLoadErrors naming what happened,
    as the suite's worker reports them, never the end of the command or a traceback."""
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, message in [("exits_at_import:forward", "cannot import module 'exits_at_import' (SystemExit: 3)"),
                          (f"{ADAPTERS}:ExitsOnInit", "could not be instantiated with no arguments (SystemExit: 3)"),
                          (f"{ADAPTERS}:DtypeRaises", "dtype raised RuntimeError: dtype property broke")]:
        with pytest.raises(AdapterLoadError) as raised:
            load_adapter(spec)
        assert str(raised.value).startswith(f"--impl {spec}: ") and message in str(raised.value), spec


def test_the_repro_of_a_pyargs_run_reruns_the_check_from_any_folder(tmp_path):
    """`pytest --pyargs lmref.conformance` from a folder of one's own: the repro line a failure
    prints names the test by its module in the package, and run from that folder it re-runs
    that one check, which fails again."""
    env = {k: v for k, v in os.environ.items() if k not in ("LMREF_IMPL", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # tests.adapters_for_tests

    def pytest_in(folder: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder,
                              env=env, capture_output=True, text=True, timeout=300)

    first = pytest_in(tmp_path, "--pyargs", "lmref.conformance", "--arch", "llama3",
                      "--impl", f"{ADAPTERS}:WrongSecondMlp")
    assert first.returncode == 1, first.stdout + first.stderr
    repro = next(line for line in first.stdout.splitlines() if line.startswith("repro: python -m pytest --pyargs "))
    again = pytest_in(tmp_path, *shlex.split(repro.removeprefix("repro: python -m pytest ")))
    assert again.returncode == 1 and "1 failed" in again.stdout, repro + "\n" + again.stdout + again.stderr


def test_installed_package_form_runs_the_same_suite(tmp_path):
    """`pytest -p lmref.conformance.plugin --pyargs lmref.conformance`: the plugin named by hand
    (entry points off) is registered once even though conformance/conftest.py is loaded too.
    (Without -p, the pytest11 entry point loads it: tests/test_namespace.py.)"""
    run = run_suite(tmp_path, "-p", "lmref.conformance.plugin", "--pyargs", "--arch", "gpt2",
                    target="lmref.conformance")
    assert run.rc == 0, run.out
    assert set(statuses(run, "forward")) == {"PASS"} and len(statuses(run, "forward")) == 4
