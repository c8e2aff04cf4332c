"""The README's third-party adapter example really runs and passes what it implements."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples.numpy_llama_adapter import LlamaAdapter
from tests.controls import run_arch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arch", ["llama1", "llama2", "llama2-70b", "llama3"])
def test_example_passes_forward_and_loss_and_declines_the_rest(arch):
    statuses = {(case, cap): r.status for case, cap, r in run_arch(LlamaAdapter(), arch)}
    assert {s for (_, cap), s in statuses.items() if cap in ("forward", "loss")} == {"PASS"}
    assert {s for (_, cap), s in statuses.items() if cap in ("decode", "capture")} == {"NOT SUPPORTED"}


def test_example_declines_rope_scaling_as_not_supported():
    results = run_arch(LlamaAdapter(), "llama3.1")
    assert {r.status for _, _, r in results} == {"NOT SUPPORTED"}
    assert "not llama3.1" in results[0][2].message


def test_readme_shows_the_example_and_its_command():
    readme = (ROOT / "README.md").read_text()
    assert "examples/numpy_llama_adapter.py" in readme
    assert "--impl examples.numpy_llama_adapter:LlamaAdapter" in readme
