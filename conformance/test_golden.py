"""The conformance tests: every golden case of the selected archs, one test per capability.

Ids carry the arch and the case (`test_forward[llama3-prefill-b2-s7]`), so one check re-runs
alone.  Verdicts come from `conformance.runner.run_check`; here they become pytest outcomes:

  PASS           passed
  FAIL           failed in the test body, with the metrics and a repro command
  NOT SUPPORTED  skipped, reason "NOT SUPPORTED: ..." (shown as NOT SUPPORTED)
  ERROR          failed in the fixture, so pytest reports an ERROR: the adapter raised, its
                 worker process exited or ran past --timeout, or the golden case could not be
                 loaded (tampered, missing or unlisted file): loud, never a skip
"""

from __future__ import annotations

import pytest
from lmref.conformance.plugin import suite_of
from lmref.conformance.report import PROPERTY
from lmref.conformance.runner import ERROR, NOT_SUPPORTED, PASS, CheckResult, run_check
from lmref.conformance.store import GoldenStoreError


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "golden_key" not in metafunc.fixturenames:
        return
    capability = metafunc.function.__name__.removeprefix("test_")
    keys = suite_of(metafunc.config).keys(capability)
    metafunc.parametrize("golden_key", keys, ids=[f"{arch}-{case}" for arch, case in keys])


@pytest.fixture
def check(request: pytest.FixtureRequest, golden_key: tuple[str, str]) -> CheckResult:
    """Run the test's capability on its case; ERROR and NOT SUPPORTED end the test here."""
    suite = suite_of(request.config)
    arch, name = golden_key
    capability = request.function.__name__.removeprefix("test_")
    info = {"arch": arch, "case": name, "capability": capability}  # read by conformance/report.py
    request.node.user_properties.append((PROPERTY, info))
    try:
        case, problem = suite.case(arch, name), None
    except GoldenStoreError as e:
        case, problem = None, f"ERROR {arch}/{name} {capability}: golden case unusable: {e}"
    if problem:  # failed outside the except block: pytest shows the message alone, no chained traceback
        info["message"] = problem
        pytest.fail(problem, pytrace=False)
    with suite.time_limit():  # --timeout: the adapter's calls for this check, in its worker process
        result = run_check(case, suite.adapter, capability, suite.tolerances,
                           repro=suite.repro(request.node.nodeid, arch))
    info |= {"metrics": result.metrics, "message": result.message}
    if result.status == ERROR:
        pytest.fail(result.message, pytrace=False)
    if result.status == NOT_SUPPORTED:
        pytest.skip(result.message)
    return result


def _verdict(result: CheckResult) -> None:
    if result.status != PASS:
        pytest.fail(result.message, pytrace=False)


def test_forward(check: CheckResult) -> None:
    """Prefill logits [batch, seq, vocab] of every case against the golden."""
    _verdict(check)


def test_decode(check: CheckResult) -> None:
    """Decode cases: prompt_len tokens in one prefill, then one token at a time via the KV cache."""
    _verdict(check)


def test_loss(check: CheckResult) -> None:
    """Mean next-token cross-entropy of every case."""
    _verdict(check)


def test_capture(check: CheckResult) -> None:
    """Captured intermediates of the cases that store them; a FAIL names the first diverging one."""
    _verdict(check)


def test_routing(check: CheckResult) -> None:
    """Mixtures of experts: every token of every MoE layer chooses the golden's experts."""
    _verdict(check)
