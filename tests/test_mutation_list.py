"""The mutation tool's list and machinery (tools/mutation, docs/mutation.md), without running a
mutant's suites: the list must break loudly when the code it mutates moves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lmref.conformance.adapters import BUILTINS, load_adapter
from lmref.spec.presets import resolve_archs
from tools.mutation import report
from tools.mutation.mutants import MUTANTS, by_id
from tools.mutation.run import main as run_main
from tools.mutation.sandbox import Sandbox

REPO = Path(__file__).resolve().parents[1]


def test_ids_are_unique():
    ids = [m.id for m in MUTANTS]
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_each_mutant_applies_to_the_current_tree(mutant):
    assert mutant.file.startswith(("impl_torch/", "impl_jax/")), mutant.file
    text = (REPO / mutant.file).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.id}: its old text occurs {text.count(mutant.old)} times in {mutant.file}"
    assert mutant.new != mutant.old and "\n" not in mutant.new, mutant.id
    assert mutant.tests and all((REPO / f).is_file() and f.startswith(f"tests/{mutant.backend}/") for f in mutant.tests)
    own = (mutant.backend, f"lmref.impl_{mutant.backend}.adapter:")  # a built-in, or the twin's module
    assert mutant.impls and all(impl.startswith(own) for impl in mutant.impls), (mutant.id, mutant.impls)
    assert all(impl in BUILTINS or load_adapter(impl) for impl in mutant.impls), mutant.impls
    assert resolve_archs(mutant.archs), mutant.archs  # raises KeyError naming an unknown arch


def test_by_id_refuses_an_unknown_id():
    assert [m.id for m in by_id(["jax-rope-theta"])] == ["jax-rope-theta"]
    with pytest.raises(KeyError, match="unknown mutant id.*no-such-mutant"):
        by_id(["no-such-mutant"])


def test_sandbox_imports_its_own_copy_and_leaves_the_tree_untouched():
    mutant = by_id(["torch-rope-theta"])[0]
    before = (REPO / mutant.file).read_text()
    with Sandbox(REPO) as box:
        box.apply(mutant)
        code = "import lmref.impl_torch.rope as r, lmref.spec as s; print(r.__file__); print(s.__file__)"
        printed = subprocess.run([box.python, "-c", code], cwd="/", check=True, capture_output=True,
                                 text=True).stdout.split()
        assert printed == [str(box.root / "impl_torch" / "rope.py"), str(box.root / "spec" / "__init__.py")]
        assert mutant.new in (box.root / mutant.file).read_text()
        root = box.root
    assert not root.exists()
    assert (REPO / mutant.file).read_text() == before


def _suite(killed: bool, test: str | None, seconds: float) -> dict:
    return {"killed": killed, "test": test, "seconds": seconds}


def test_render_writes_the_table_and_the_score(tmp_path):
    results = [
        {"id": "torch-a", "backend": "torch", "bug": "bug a", "equivalent": None, "reason": None,
         "property": _suite(True, "tests/torch/test_x.py::test_a", 3.0), "conformance": _suite(True, "[torch] c", 2.0)},
        {"id": "jax-b", "backend": "jax", "bug": "bug b", "equivalent": None, "reason": "no case reaches it",
         "property": _suite(True, "tests/jax/test_y.py::test_b", 4.0), "conformance": _suite(False, None, 9.0)},
        {"id": "torch-c", "backend": "torch", "bug": "bug c", "equivalent": "hidden by the mask", "reason": None,
         "property": _suite(False, None, 5.0), "conformance": _suite(False, None, 6.0)},
    ]
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"date": "2025-01-01", "jobs": 1, "seconds": 120.0, "baseline_seconds": 30.0,
                                 "results": results}))
    docs = tmp_path / "mutation.md"
    docs.write_text(f"# Title\n\n{report.BEGIN}\nnot yet run\n{report.END}\n\nafter\n")
    run_main(["--render", str(saved), "--docs", str(docs)])
    text = docs.read_text()
    assert text.startswith("# Title\n") and text.endswith(f"{report.END}\n\nafter\n") and "not yet run" not in text
    assert "1 of 2 non-equivalent mutants killed by both suites; property 2, conformance 1" in text
    assert "| `jax-b` | jax | bug b | `tests/jax/test_y.py::test_b` / 4.0 s | **survived** / 9.0 s |" in text
    assert "- `jax-b`: missed by conformance. no case reaches it" in text
    assert "- `torch-c`: hidden by the mask" in text


def test_render_refuses_a_docs_file_without_markers(tmp_path):
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"date": "d", "jobs": 1, "seconds": 1.0, "baseline_seconds": 1.0, "results": []}))
    docs = tmp_path / "mutation.md"
    docs.write_text("no markers\n")
    with pytest.raises(ValueError, match="no <!-- mutation:begin -->"):
        run_main(["--render", str(saved), "--docs", str(docs)])
