"""Issue 10, item 7: the adapter runs in a worker process, so an adapter that ends its process
or hangs is an ERROR for that check, and the run goes on with a fresh worker."""

from __future__ import annotations

import time

import pytest

from lmref.conformance.runner import ERROR, PASS
from tests.test_conformance_plugin import ADAPTERS, run_suite, statuses


def test_an_adapter_that_calls_os_exit_is_an_error_and_the_run_goes_on(tmp_path):
    """issue 10, item 7: os._exit(0) inside forward must not end pytest with exit 0 and no
    report: that check is an ERROR saying the process exited, the rest still run."""
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:ExitsOnBatch3")
    assert run.rc == 1, run.out
    assert run.report is not None, run.out
    [exited] = run.results(capability="forward", case="prefill-b3-s13")
    assert exited["status"] == ERROR
    assert "exited with status 0" in exited["message"] and "forward" in exited["message"]
    assert sorted(statuses(run, "forward")) == [ERROR, PASS, PASS, PASS]
    assert statuses(run, "loss") == [PASS] * 4
    assert "11 checks: 7 PASS, 3 NOT SUPPORTED, 0 FAIL, 1 ERROR" in run.out


@pytest.mark.parametrize("option", ["--timeout", "--lmref-timeout"])
def test_an_adapter_that_hangs_times_out_as_an_error(tmp_path, option):
    """issue 10, item 7: a forward that never returns is stopped after --timeout seconds; that
    check is an ERROR saying so, by the option's name as given, the worker is restarted and
    the other checks pass."""
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:HangsOnBatch3", option, "3")
    assert run.rc == 1, run.out
    [hung] = run.results(capability="forward", case="prefill-b3-s13")
    assert hung["status"] == ERROR
    assert f"did not return within 3 s ({option})" in hung["message"]
    assert f"lmref worker: the adapter runs in a worker process, {option} 3 s per check" in run.out
    assert sorted(statuses(run, "forward")) == [ERROR, PASS, PASS, PASS]
    assert statuses(run, "loss") == [PASS] * 4


def test_a_timed_out_check_kills_the_processes_the_adapter_started(tmp_path):
    """The worker is a process group of its own: past --timeout it is killed with what its
    adapter started, which would otherwise run on, orphaned, after the suite."""
    pid_file = tmp_path / "child.pid"
    run = run_suite(tmp_path, "--arch", "llama3", "-k", "test_forward and prefill-b3-s13", "--lmref-timeout", "3",
                    "--impl", f"{ADAPTERS}:SpawnsAndHangsOnBatch3", env={"LMREF_TEST_CHILD_PID": str(pid_file)})
    assert run.rc == 1 and "did not return within 3 s" in run.out, run.out
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(child):
        time.sleep(0.2)
    assert not _running(child), "the adapter's process outlived the check that timed out"


def test_an_adapter_that_raises_system_exit_is_an_error(tmp_path):
    """issue 10, item 7: SystemExit from an adapter is that check's ERROR, not the end of the run."""
    run = run_suite(tmp_path, "--arch", "llama3", "--impl", f"{ADAPTERS}:SysExitOnBatch3")
    assert run.rc == 1, run.out
    [exited] = run.results(capability="forward", case="prefill-b3-s13")
    assert exited["status"] == ERROR and "SystemExit" in exited["message"]
    assert statuses(run, "loss") == [PASS] * 4


def test_the_timeout_option_is_checked_and_documented(tmp_path):
    """issue 10, item 7: --timeout takes a positive number of seconds; the help gives the default."""
    run = run_suite(tmp_path, "--arch", "llama3", "--timeout", "0")
    assert run.rc == 4 and "--timeout 0: " in run.out, run.out
    run = run_suite(tmp_path, "--arch", "llama3", "--lmref-timeout=0")  # the name typed, not its alias
    assert run.rc == 4 and "--lmref-timeout 0: " in run.out, run.out
    run = run_suite(tmp_path, "--help")
    text = " ".join(run.out.split())  # argparse wraps the help
    assert "--timeout=SECONDS, --lmref-timeout=SECONDS" in text and "(default 600)" in text


ORPHAN_SCRIPT = """
import sys, threading
from lmref.conformance.worker_adapter import WorkerAdapter
from lmref.conformance.store import GoldenStore

if __name__ == "__main__":
    adapter = WorkerAdapter("tests.adapters_for_tests:HangsOnBatch3", 600)
    print(adapter._worker.process.pid, flush=True)
    case = GoldenStore().load("llama3", "prefill-b3-s13")
    adapter.call_case("forward", case)  # hangs until the test kills this process
"""


def test_a_hung_worker_ends_when_the_suite_process_is_killed(tmp_path):
    """issue 10, item 7: a worker stuck in an adapter call does not outlive its suite process
    (killed with SIGKILL, so no clean-up of its own runs)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "suite.py"
    script.write_text(ORPHAN_SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=repo, env=env, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(proc.stdout.readline())
        time.sleep(1.0)  # the call is under way
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _running(worker):
            time.sleep(0.2)
        assert not _running(worker), "the worker outlived the suite's process"
    finally:
        proc.kill()


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, already exited, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_worker_loads_numpy_without_huge_page_advice_unless_told(tmp_path):
    """conformance/worker.py: each case's weights are fresh memory in the worker, and where the
    kernel compacts memory to fault in huge pages that cost 0.3 s per 167 MB; a value the user
    set is kept."""
    args = ("--arch", "llama3", "-k", "test_forward and prefill-b2-s7", "--impl", f"{ADAPTERS}:ReportsHugePageAdvice")
    for env, expected in [({}, "huge pages advised: False, NUMPY_MADVISE_HUGEPAGE=0"),
                          ({"NUMPY_MADVISE_HUGEPAGE": "1"}, "huge pages advised: True, NUMPY_MADVISE_HUGEPAGE=1")]:
        run = run_suite(tmp_path / str(len(env)), *args, env=env)
        [result] = run.results(capability="forward")
        assert expected in result["message"], run.out


def test_under_xdist_only_the_workers_hold_the_adapter(tmp_path):
    """`-n 2`: the controller loads the adapter for the header, then lets its worker go; while
    the checks run, the adapter lives in the two xdist workers' processes only."""
    pids = tmp_path / "pids"
    pids.mkdir()
    run = run_suite(tmp_path, "--arch", "llama3", "-k", "test_forward", "-p", "xdist.plugin", "-n", "2",
                    "--impl", f"{ADAPTERS}:CountsItsLiveCopies", env={"LMREF_TEST_PIDS": str(pids)})
    assert run.rc == 0 and "4 passed" in run.out, run.out
    assert len([p for p in pids.iterdir() if p.name.isdigit()]) == 3  # loaded by the controller and each worker
    counts = [int(p.read_text()) for p in pids.glob("live-*")]
    assert len(counts) == 4 and set(counts) == {2}, counts
