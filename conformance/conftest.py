"""Loads the lmref conformance plugin (conformance/plugin.py) for `pytest conformance/ ...`.

With an installed lmref, `pytest --pyargs lmref.conformance --arch ...` loads it through the
`pytest11` entry point (conformance/loader.py) before the options are parsed, and
`-p lmref.conformance.plugin` does the same by hand; this file then must not register it a
second time.

Before it imports the plugin (NumPy and the golden), it starts the session's adapter worker
process (conformance/worker.py), which imports the same modules meanwhile.
"""

import pytest

from lmref.conformance.loader import PLUGIN


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if pluginmanager.get_plugin(PLUGIN) is None:
        from lmref.conformance import worker

        worker.prestart()  # the adapter's worker process imports NumPy while this one does
        import lmref.conformance.plugin as plugin

        # pytest_addoption and pytest_configure are historic hooks: a plugin registered now
        # still receives both calls.
        pluginmanager.register(plugin, PLUGIN)
