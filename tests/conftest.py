"""Hypothesis profiles for the property tests (select with --hypothesis-profile NAME), cheap
XLA compiles for every test of the JAX twin, cached export traces, and the fixture for the
tests of Ctrl-C.

dev: quick local runs.  ci: derandomized, what `make test` runs.  thorough: many examples,
for `make test-thorough` or before a release.  deadline=None everywhere: JIT compilation and
first-call overheads of the twins make per-example timing meaningless.
"""

import signal
import sys

import pytest
from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)

settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile("dev")


@pytest.fixture(autouse=True, scope="package")  # the tests package: not conformance/, run in the same session
def _fast_xla_compiles():
    """Cheap XLA compiles (tests/xla_compiles.py) for the JAX twin's tests: tests/jax, and the
    twins' controls, routing margin and gradients here.  tests/jax/test_jit.py runs the entry
    points with XLA's defaults, as shipped; `pytest conformance/ --impl jax` runs them so too."""
    from tests.xla_compiles import fast_xla_compiles

    with fast_xla_compiles():
        yield


@pytest.fixture(autouse=True, scope="package")  # the tests package: not conformance/
def _remembered_traces():
    """One trace per model, weights and example in a test process (tests/export_memo.py), where
    the collected tests imported the exporter (a run without them need not import torch)."""
    exporter = sys.modules.get("lmref.export.exporter")
    if exporter is None:
        yield
        return
    from tests.export_memo import remembered_traces

    with remembered_traces(exporter):
        yield


@pytest.fixture
def sigint_as_from_a_terminal():
    """Ctrl-C reaches this test and the commands it starts, as in a terminal, however the suite
    was started.  A shell without job control starts a background job (`make test &`, `nohup`)
    with SIGINT ignored, which every process below inherits: Python then installs no
    KeyboardInterrupt handler and lmref rightly carries on.  Here SIGINT raises KeyboardInterrupt
    in this process, and a child, whose handler resets to the default at exec, gets Python's."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
