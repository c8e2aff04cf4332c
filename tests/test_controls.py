"""Negative and positive controls: the suite must fail every broken implementation and pass
the correct float32 one, with margins (conformance/TOLERANCES.md records them)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmref.conformance.runner import run_check
from lmref.conformance.store import GoldenStore
from lmref.spec.presets import PRESETS
from tests.controls import NEGATIVE_CONTROLS, POSITIVE_CONTROL, run_arch, worst_ratio

ROOT = Path(__file__).resolve().parents[1]
# The calibration keeps at least this factor between each threshold and both kinds of control.
MIN_MARGIN = 10.0


@pytest.fixture(scope="module")
def store():
    return GoldenStore()


@pytest.mark.parametrize("control", NEGATIVE_CONTROLS, ids=[c.adapter.name for c in NEGATIVE_CONTROLS])
def test_negative_control_fails_its_arch(control, store):
    results = run_arch(control.adapter, control.arch, store)
    statuses = {status for _, _, r in results for status in [r.status]}
    assert "ERROR" not in statuses, [r.message for _, _, r in results if r.status == "ERROR"]
    assert "FAIL" in statuses, f"{control.adapter.name} ({control.what}) passed the {control.arch} suite"
    assert worst_ratio(results) >= MIN_MARGIN, f"{control.adapter.name}: too close to the float32 thresholds"


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_positive_control_passes_every_check(arch, store):
    results = run_arch(POSITIVE_CONTROL, arch, store)
    assert [(case, cap, r.status) for case, cap, r in results if r.status != "PASS"] == []
    assert worst_ratio(results) <= 1 / MIN_MARGIN


def test_a_decode_only_bug_is_located_to_the_kv_cache(store):
    control = next(c for c in NEGATIVE_CONTROLS if c.adapter.name == "decode_positions_restart")
    failed = [(cap, r) for _, cap, r in run_arch(control.adapter, control.arch, store) if r.status == "FAIL"]
    assert [cap for cap, _ in failed] == ["decode"]
    assert "passes: the KV-cache path is where it breaks" in failed[0][1].message
    assert "diverg" not in failed[0][1].message  # a prefill's captures cannot show a cache bug


def test_a_cache_kept_between_calls_fails_on_the_second_decode_call(store):
    """The suite calls decode once per case: its second identical call is what shows a cache
    that is never emptied (the first call is right)."""
    from tests.controls import DecodeCacheKeptAcrossCalls

    failed = [(cap, r) for _, cap, r in run_arch(DecodeCacheKeptAcrossCalls(), "llama3", store) if r.status != "PASS"]
    assert [(cap, r.status) for cap, r in failed] == [("decode", "FAIL")]
    message = failed[0][1].message
    assert "a second identical call: nmse" in message
    assert "the first of two identical decode calls passed: state is kept from one call to the next" in message
    assert "KV-cache path" not in message  # forward is not re-run: the first call already passed


@pytest.mark.parametrize("capability", ["forward", "loss"])
def test_a_long_case_failure_names_its_first_diverging_component(store, capability):
    """The long case stores no captures (their size); its FAIL names the component all the
    same, from golden captures impl_numpy computes once it reproduces the stored logits."""
    control = next(c for c in NEGATIVE_CONTROLS if c.adapter.name == "llama3_scaling_missing")
    result = run_check(store.load("llama3.1", "long-b2-s160"), control.adapter, capability)
    assert result.status == "FAIL"
    assert ("first diverging component: layers.0.attn (nmse 0.144 > 1e-10)\n"
            "(golden captures computed now by impl_numpy: the store keeps none for this case)") in result.message


def test_no_component_is_named_from_captures_that_do_not_reproduce_the_stored_logits(store):
    """A case whose stored logits this lmref's golden does not reproduce (another version's
    store) gets no computed captures: the component is unknown, not guessed."""
    control = next(c for c in NEGATIVE_CONTROLS if c.adapter.name == "llama3_scaling_missing")
    case = store.load("llama3.1", "long-b2-s160")
    other = dataclasses.replace(case, expected=case.expected | {"logits": case.expected["logits"] * (1 + 1e-6)})
    result = run_check(other, control.adapter, "forward")
    assert result.status == "FAIL" and ("first diverging component: unknown (the case stores no captures, and this "
                                        "lmref's golden math does not reproduce its logits)") in result.message


def test_a_broken_control_fails_through_pytest_with_a_repro_line():
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "conformance/", "--arch", "llama3", "-p", "no:cacheprovider",
         "--impl", "tests.controls:rope_interleaved", "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "llama3  FAIL 4   FAIL 1  FAIL 4  FAIL 2" in run.stdout
    assert "11 checks: 0 PASS, 0 NOT SUPPORTED, 11 FAIL, 0 ERROR" in run.stdout
    assert 'repro: python -m pytest "conformance/test_golden.py::test_forward[llama3-prefill-b2-s7]"' in run.stdout
    assert "first diverging component: layers.0.attn" in run.stdout
