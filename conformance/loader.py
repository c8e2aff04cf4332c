"""The `pytest11` entry point of lmref: loads the conformance plugin only when it is asked for.

pytest parses options before it collects anything, and with `--pyargs` it loads no conftest
of the named package in time, so `pytest --pyargs lmref.conformance --arch llama3` needs the
plugin registered by an entry point.  Registering it for every pytest run in an environment
that has lmref installed would add `--arch` and `--impl` to other projects' test suites (and
clash with their own options), so this hook registers it only when the command line names
the suite: a `--pyargs` argument `lmref.conformance` or one of its modules.
"""

from __future__ import annotations

import pytest

PLUGIN = "lmref.conformance.plugin"
SUITE = "lmref.conformance"


def names_the_suite(args: list[str]) -> bool:
    """Whether `args` (pytest's command line) run the suite by package name (`--pyargs`)."""
    if "--pyargs" not in args:
        return False
    return any(a == SUITE or a.startswith(f"{SUITE}.") or a.startswith(f"{SUITE}::") for a in args)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    manager = early_config.pluginmanager
    if names_the_suite(args) and manager.get_plugin(PLUGIN) is None:
        from lmref.conformance import worker

        worker.prestart()  # the adapter's worker process imports NumPy while this one does
        import lmref.conformance.plugin as plugin

        manager.register(plugin, PLUGIN)
