"""Loads the lmref conformance plugin (conformance/plugin.py) for `pytest conformance/ ...`.

An installed lmref without a checkout runs the same suite with
`pytest -p conformance.plugin --pyargs conformance --arch ...`: there `-p` registers the
plugin before options are parsed, and this file must not register it a second time.
"""

import pytest


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if pluginmanager.get_plugin("conformance.plugin") is None:
        import conformance.plugin

        # pytest_addoption and pytest_configure are historic hooks: a plugin registered now
        # still receives both calls.
        pluginmanager.register(conformance.plugin, "conformance.plugin")
