"""Loads the lmref conformance plugin (conformance/plugin.py) for `pytest conformance/ ...`.

With an installed lmref, `pytest --pyargs lmref.conformance --arch ...` loads it through the
`pytest11` entry point (conformance/loader.py) before the options are parsed, and
`-p lmref.conformance.plugin` does the same by hand; this file then must not register it a
second time.
"""

import pytest

from lmref.conformance.loader import PLUGIN


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if pluginmanager.get_plugin(PLUGIN) is None:
        import lmref.conformance.plugin as plugin

        # pytest_addoption and pytest_configure are historic hooks: a plugin registered now
        # still receives both calls.
        pluginmanager.register(plugin, PLUGIN)
