"""Loads the lmref conformance plugin (conformance/plugin.py) for `pytest conformance/ ...`."""

from conformance.plugin import pytest_addoption, pytest_configure  # noqa: F401  (pytest hooks)
