"""The pytest plugin of the conformance suite: options, their validation, header and reports.

conformance/conftest.py imports `pytest_addoption` and `pytest_configure` from here, so from
the repository root:

    pytest conformance/ --arch llama3 --impl mypkg.lmref_adapter:Adapter --report-json out.json

Options (all validated before collection; a bad value is a usage error, exit status 4):
  --arch A[,B]        preset ids, families (`llama`) or patterns (`olmo*`); default: every
                      arch in the golden store.  Each must have golden cases.
  --impl SPEC         a built-in (numpy, torch, jax, hf, onnx) or package.module:attr; default
                      $LMREF_IMPL, else numpy.  An empty value (an unset shell variable) is
                      refused, so is an empty $LMREF_IMPL.
  --golden-dir DIR    a custom golden store (default: conformance/golden inside the package,
                      which must be the release golden set that conformance/golden_pin.py pins)
  --report-json PATH  write every result and the summary as JSON (checked writable up front;
                      never the golden store, a file in it, or a --tolerances file)
  --tolerance D.M=V   override one threshold for the run (repeatable)
  --tolerances FILE   overrides from a JSON file {dtype: {metric: value}} (repeatable)
  --timeout SECONDS   the longest one check may take (default 600); also --lmref-timeout, the
                      only name when another plugin (pytest-timeout) owns --timeout

The adapter runs in a worker process (conformance/worker.py; worker_adapter.WorkerAdapter), started
as the plugin loads and stopped at the session's end: an adapter that exits or hangs is an
ERROR for that check.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmref.conformance import worker as workers
from lmref.conformance.adapters import (
    BUILTINS, CAPABILITIES, ENV_VAR, Adapter, AdapterLoadError, load_named, resolve_impl_spec, row_phrase,
)
from lmref.conformance.order import arch_major
from lmref.conformance.report import REPORT_FORMAT, Report
from lmref.conformance.reporter import SuiteReporter, invocation_path
from lmref.conformance.runner import applies
from lmref.conformance.worker_adapter import WorkerAdapter
from lmref.conformance.store import (
    DEFAULT_GOLDEN_DIR, MANIFEST, GoldenCase, GoldenStore, GoldenStoreError, open_checked,
)
from lmref.conformance.tolerances import ToleranceError, Tolerances, build_tolerances
from lmref.conformance.worker import DEFAULT_TIMEOUT
from lmref.spec.errors import OutputError
from lmref.spec.outputs import check_report_file
from lmref.spec.presets import resolve_archs


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lmref", "lmref conformance suite")
    group.addoption("--arch", dest="lmref_arch", metavar="ARCHS",
                    help="preset ids, families or patterns, comma-separated (default: every arch in the store)")
    group.addoption("--impl", dest="lmref_impl", metavar="SPEC",
                    help=f"implementation: a built-in ({', '.join(BUILTINS)}) or package.module:attr "
                         f"(default: ${ENV_VAR}, else numpy)")
    group.addoption("--golden-dir", dest="lmref_golden_dir", metavar="DIR",
                    help="golden store directory (default: conformance/golden of the installed package)")
    group.addoption("--report-json", dest="lmref_report_json", metavar="PATH",
                    help="write every result and the summary to PATH as JSON")
    group.addoption("--tolerance", dest="lmref_tolerance", action="append", default=[], metavar="DTYPE.METRIC=VALUE",
                    help="override one tolerance for this run, e.g. float32.nmse=1e-8 (repeatable)")
    group.addoption("--tolerances", dest="lmref_tolerances", action="append", default=[], metavar="FILE",
                    help='tolerance overrides from JSON {"float32": {"nmse": 1e-8}} (repeatable)')
    timeout = dict(dest="lmref_timeout", metavar="SECONDS", default=None,
                   help=f"the longest one check may take, in seconds (default {DEFAULT_TIMEOUT:g}); past it the "
                        "check is an ERROR and the adapter's worker process is replaced")
    try:
        group.addoption("--timeout", "--lmref-timeout", **timeout)
    except ValueError:  # pytest-timeout owns --timeout: ours is --lmref-timeout alone
        group.addoption("--lmref-timeout", **timeout)


@dataclass
class Suite:
    """Everything a conformance session resolved from its options, and its results."""

    store: GoldenStore
    archs: list[str]
    adapter: Adapter
    tolerances: Tolerances
    repro_options: list[str]  # options a re-run of one test must repeat (golden dir, tolerances)
    custom_store: bool = False  # named with --golden-dir, not the release golden set
    pyargs: bool = False  # run as `pytest --pyargs lmref.conformance` (the installed package, any folder)
    report: Report = field(default_factory=Report)
    _metas: dict = field(default_factory=dict)
    _cases: dict = field(default_factory=dict)

    def _meta(self, arch: str, name: str) -> dict | None:
        """case.json, or None when it cannot be read (its tests then report the store's error)."""
        if (arch, name) not in self._metas:
            try:
                self._metas[arch, name] = self.store.load_meta(arch, name)
            except GoldenStoreError:
                self._metas[arch, name] = None
        return self._metas[arch, name]

    def keys(self, capability: str) -> list[tuple[str, str]]:
        """(arch, case) pairs with a `capability` check; every capability for an unreadable case."""
        return [
            (arch, name)
            for arch in self.archs
            for name in self.store.case_names(arch)
            if (meta := self._meta(arch, name)) is None or applies(meta, capability)
        ]

    def case(self, arch: str, name: str) -> GoldenCase:
        """The verified case, loaded once per session; raises GoldenStoreError every time it fails."""
        if (arch, name) not in self._cases:
            try:
                self._cases[arch, name] = self.store.load(arch, name)
            except GoldenStoreError as e:
                self._cases[arch, name] = e
        found = self._cases[arch, name]
        if isinstance(found, GoldenStoreError):
            raise found
        return found

    def time_limit(self):
        """The per-check deadline of a worker-run adapter (a no-op for an in-process one)."""
        deadline = getattr(self.adapter, "check_deadline", None)
        return deadline() if deadline else contextlib.nullcontext()

    def case_overrides(self) -> dict[str, dict]:
        """{"arch/case": tolerances} of the selected cases whose case.json overrides tolerance rows."""
        found = {}
        for arch in self.archs:
            for name in self.store.case_names(arch):
                meta = self._meta(arch, name)
                if meta and meta.get("tolerances"):
                    found[f"{arch}/{name}"] = meta["tolerances"]
        return found

    @property
    def golden_label(self) -> str:
        """How the report names the golden set: its version, or "custom golden store"."""
        return f"custom golden store {self.store.version}" if self.custom_store else f"golden {self.store.version}"

    def repro(self, nodeid: str, arch: str) -> str:
        """A command that re-runs one test alone: from the repository root, or in a --pyargs
        run from any folder, by the test's module in the installed package.  `python -m pytest`,
        which puts the current folder on sys.path as the run did, so that an adapter found there
        is found again (the `pytest` script does not)."""
        options = ["--arch", arch, "--impl", self.adapter.spec, *self.repro_options]
        if self.pyargs:
            module, _, test = nodeid.partition("::")  # e.g. "test_golden.py", "test_forward[gpt2-...]"
            target = f'--pyargs "lmref.conformance.{Path(module).stem}::{test}"'
        else:
            target = f'"{nodeid}"'
        return f"python -m pytest {target} " + " ".join(shlex.quote(o) for o in options)

    def run_info(self) -> dict:
        """The head of the JSON report."""
        return {
            "impl": self.adapter.name,
            "impl_spec": self.adapter.spec,
            "impl_version": self.adapter.version,
            "dtype": self.adapter.row(),
            "dtype_declared": bool(self.adapter.dtype),
            "capabilities": [c for c in CAPABILITIES if self.adapter.supports(c)],
            "golden_version": self.store.version,
            "golden_store": "custom" if self.custom_store else "release",
            "golden_dir": str(self.store.root),
            "archs": self.archs,
            "tolerance_overrides": self.tolerances.run_overrides,
            "case_tolerance_overrides": self.case_overrides(),
            "timeout_s": getattr(self.adapter, "timeout", None),
        }

    def header_lines(self) -> list[str]:
        a = self.adapter
        supported = [c for c in CAPABILITIES if a.supports(c)]
        missing = [c for c in CAPABILITIES if c not in supported]
        env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("LMREF_"))
        overrides = self.tolerances.run_overrides
        cases = self.case_overrides()
        golden = (f"custom golden store (manifest {self.store.version})" if self.custom_store
                  else f"{self.store.version} (release)")
        timeout = getattr(a, "timeout", None)
        return [
            f"lmref impl: {a.name} (--impl {self.adapter.spec}), version {a.version}",
            f"lmref capabilities: {', '.join(supported)}" + (f"; NOT SUPPORTED: {', '.join(missing)}" if missing else ""),
            f"lmref tolerance row: {a.row()} ({row_phrase(a.dtype)})"
            + (f"; run overrides: {json.dumps(overrides)}" if overrides else ""),
            "lmref case tolerance overrides: "
            + ("; ".join(f"{case} {json.dumps(t)}" for case, t in cases.items()) or "none"),
            f"lmref golden set: {golden} at {self.store.root}",
            f"lmref archs: {', '.join(self.archs)}",
            *([f"lmref worker: the adapter runs in a worker process, {getattr(a, 'timeout_option', '--timeout')} "
               f"{timeout:g} s per check"] if timeout is not None else []),
            f"lmref env: {env or '(no LMREF_* variables)'}",
        ]


SUITE = pytest.StashKey[Suite]()


def suite_of(config: pytest.Config) -> Suite:
    if SUITE not in config.stash:
        raise pytest.UsageError("the lmref conformance plugin is not configured: run pytest on conformance/ "
                                "so that conformance/conftest.py is loaded")
    return config.stash[SUITE]


# --- resolving the options ----------------------------------------------------------------------


def _open_store(config: pytest.Config) -> tuple[GoldenStore, bool]:
    """The store, and whether it is a custom one (named with --golden-dir): store.py open_checked."""
    value = config.option.lmref_golden_dir
    root = invocation_path(config, value) if value and value.strip() else value  # '': refused by open_checked
    try:
        return open_checked(root)
    except GoldenStoreError as e:
        raise pytest.UsageError(f"golden store: {e}") from None
    except (OSError, KeyError, TypeError, AttributeError) as e:
        where = (root or DEFAULT_GOLDEN_DIR) / MANIFEST
        raise pytest.UsageError(f"golden store: cannot read {where} ({type(e).__name__}: {e})") from None


def timeout_option(config: pytest.Config) -> str:
    """The name this run gives the check timeout: --lmref-timeout where it was typed so, or
    where pytest-timeout owns --timeout; else --timeout."""
    typed = any(str(a).split("=")[0] == "--lmref-timeout" for a in config.invocation_params.args)
    return "--lmref-timeout" if typed or config.pluginmanager.hasplugin("timeout") else "--timeout"


def _timeout(config: pytest.Config) -> float:
    value = config.option.lmref_timeout
    if value is None:
        return DEFAULT_TIMEOUT
    seconds = workers.timeout_seconds(value)
    if seconds is None:
        raise pytest.UsageError(f"{timeout_option(config)} {value}: give the longest a check may take, a positive "
                                f"number of seconds (default {DEFAULT_TIMEOUT:g})")
    return seconds


def _check_report_path(config: pytest.Config, inputs: list[Path]) -> None:
    """A --report-json that cannot be written, that is, holds or lies inside one of the run's
    `inputs` (the golden store, a --tolerances file), or that names a file other than an empty
    one or an earlier report, is a usage error now, not a traceback or a lost file after the run
    (spec/outputs.py check_report_file: nothing is written or made)."""
    value = config.option.lmref_report_json
    if value is None:
        return
    if not value.strip():
        raise pytest.UsageError("--report-json is empty: give the path of a file to write")
    try:
        check_report_file(invocation_path(config, value), inputs, REPORT_FORMAT)
    except OutputError as e:
        raise pytest.UsageError(str(e)) from None


def _resolve_archs(value: str | None, store: GoldenStore) -> list[str]:
    if value is None:
        archs = store.archs()
        if not archs:
            raise pytest.UsageError(f"golden store {store.root} lists no cases; generate them with `lmref golden`")
        return archs
    try:
        archs = resolve_archs(value)
    except KeyError as e:
        raise pytest.UsageError(f"--arch {value}: {e.args[0]}") from None
    empty = [a for a in archs if not store.case_names(a)]
    if empty:
        raise pytest.UsageError(
            f"--arch {value}: no golden cases for {', '.join(empty)} in {store.root}; "
            f"archs with cases: {', '.join(store.archs()) or 'none'} (generate with `lmref golden --arch ...`)"
        )
    return archs


def build_suite(config: pytest.Config) -> Suite:
    """Resolve and check every option; raise pytest.UsageError naming the bad one.  The
    adapter's worker process starts last, once every cheaper check has passed."""
    option = config.option
    try:
        spec, where = resolve_impl_spec(option.lmref_impl)
    except AdapterLoadError as e:
        raise pytest.UsageError(str(e)) from None
    timeout = _timeout(config)
    store, custom = _open_store(config)
    archs = _resolve_archs(option.lmref_arch, store)
    files = [str(invocation_path(config, f)) if f.strip() else f for f in option.lmref_tolerances]  # '': refused below
    try:
        tolerances = build_tolerances(files, option.lmref_tolerance)
    except ToleranceError as e:
        raise pytest.UsageError(str(e)) from None
    _check_report_path(config, [Path(store.root), *map(Path, files)])
    try:
        adapter = load_named(spec, where, lambda name: WorkerAdapter(name, timeout, workers.take_prestarted(),
                                                                     timeout_option(config)))
    except AdapterLoadError as e:
        raise pytest.UsageError(str(e)) from None
    repro = (["--golden-dir", str(store.root)] if option.lmref_golden_dir else [])
    repro += [o for f in files for o in ("--tolerances", f)]
    repro += [o for t in option.lmref_tolerance for o in ("--tolerance", t)]
    repro += ["--lmref-timeout", f"{timeout:g}"] if option.lmref_timeout is not None else []
    return Suite(store, archs, adapter, tolerances, repro, custom_store=custom, pyargs=bool(option.pyargs))


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help:
        return
    suite = build_suite(config)
    config.stash[SUITE] = suite
    config.pluginmanager.register(SuiteReporter(suite), "lmref-conformance-reporter")
    if _hands_out_the_checks(config):
        suite.adapter.close()  # its name, version and capabilities are kept; a call would start a worker again


def _hands_out_the_checks(config: pytest.Config) -> bool:
    """Whether this process is pytest-xdist's controller, which runs no check: its workers each
    load the adapter themselves, and its own copy (loaded for the header and the report) need
    not hold memory, or a GPU, for the whole run."""
    return (getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")
            and not config.option.collectonly)


GOLDEN_TESTS = Path(__file__).with_name("test_golden.py")  # one test function per capability: test_{capability}


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> list | None:
    """A capability that no selected case has (routing, when no arch is a mixture of experts)
    gets no test, instead of pytest's skipped placeholder for an empty parameter set, which it
    would also count as collected.  Not reported as deselected: nothing the user asked for was
    left out."""
    suite = collector.config.stash.get(SUITE, None)
    if suite is None or collector.path != GOLDEN_TESTS or not name.startswith("test_") or not callable(obj):
        return None
    return None if suite.keys(name.removeprefix("test_")) else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The checks run arch by arch and case by case (`arch_major`)."""
    suite = config.stash.get(SUITE, None)
    if suite is not None:
        items[:] = arch_major(items, suite.archs)


def pytest_unconfigure(config: pytest.Config) -> None:
    workers.discard_prestarted()  # a usage error or --help: the worker was never taken
    suite = config.stash.get(SUITE, None)
    close = getattr(suite.adapter, "close", None) if suite else None
    if close:
        close()
