"""The conformance suite's reporting hooks (registered by conformance/plugin.py once the suite is
built): the NOT SUPPORTED status in pytest's output, the lmref table under pytest's summary,
the --report-json file, and the exit status of a run that compared nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lmref.conformance.report import is_not_supported

if TYPE_CHECKING:
    from lmref.conformance.plugin import Suite

NOTHING_COMPARED = pytest.ExitCode.NO_TESTS_COLLECTED  # the exit status of a run that compared nothing


def invocation_path(config: pytest.Config, value: str) -> Path:
    """A path option as given, from the folder pytest was started in."""
    return Path(config.invocation_params.dir, value).resolve()


class SuiteReporter:
    """Hooks that turn pytest's reports into the lmref summary table and JSON report."""

    def __init__(self, suite: Suite):
        self.suite = suite
        self.report_error: str | None = None  # the --report-json file could not be written
        self.compared_nothing = False  # the run's exit status was made NOTHING_COMPARED

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return self.suite.header_lines()

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport, config: pytest.Config):
        if is_not_supported(report):
            return "not supported", "N", "NOT SUPPORTED"
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.suite.report.add_phase(report)

    def pytest_terminal_summary(self, terminalreporter, exitstatus: int, config: pytest.Config) -> None:
        if not self.suite.report.finished():
            return
        terminalreporter.write_sep("=", f"lmref conformance: {self.suite.adapter.name} vs {self.suite.golden_label}")
        for line in self.suite.report.table_lines():
            terminalreporter.write_line(line)
        if self.suite.tolerances.run_overrides:  # a loosened row's PASS and tightest row are the loosened row's
            terminalreporter.write_line(f"lmref: judged with this run's tolerance overrides: "
                                        f"{json.dumps(self.suite.tolerances.run_overrides)}", yellow=True)
        if self.compared_nothing:
            terminalreporter.write_line(f"lmref: nothing was compared (every check NOT SUPPORTED or skipped): exit "
                                        f"status {int(NOTHING_COMPARED)}, not a pass", red=True)
        if self.report_error:
            terminalreporter.write_line(self.report_error, red=True)
        elif config.option.lmref_report_json:
            terminalreporter.write_line(f"JSON report: {invocation_path(config, config.option.lmref_report_json)}")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """A run whose checks all came back NOT SUPPORTED verified nothing: it exits with
        NOTHING_COMPARED, not 0.  The controller writes the report (a pytest-xdist worker holds
        its own share of the checks only)."""
        if hasattr(session.config, "workerinput"):
            return
        if exitstatus == pytest.ExitCode.OK and self.suite.report.compared_nothing():
            session.exitstatus = exitstatus = NOTHING_COMPARED
            self.compared_nothing = True
        path = session.config.option.lmref_report_json
        if path:
            try:
                self.suite.report.write_json(invocation_path(session.config, path), self.suite.run_info(), exitstatus)
            except OSError as e:  # checked writable before the run; it may still vanish or fill up
                self.report_error = f"lmref: error: --report-json {path}: could not be written ({e.strerror or e})"
                session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
