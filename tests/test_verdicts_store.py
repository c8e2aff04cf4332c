"""Issue 10, items 3 and 8: `lmref golden --out` deletes only what its manifest lists, and
the suite passes no structurally tampered store: the release golden set is pinned (the
package records its MANIFEST's sha256), a store named with --golden-dir is reported as a
custom golden store, unlisted files and case directories fail, and per-case tolerance
overrides are shown."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from lmref.cli import main
from lmref.conformance.generate import check
from lmref.conformance.store import DEFAULT_GOLDEN_DIR, MANIFEST, GoldenStore, sha256_of
from lmref.spec.outputs import MARKER, marker_kind
from tests.test_conformance_plugin import USAGE_ERROR, run_suite, statuses

# A plugin (loaded with -p before the suite's) that moves the package's default store to a
# copy, so that a test can damage "the release store" without touching the repository's.
DEFAULT_STORE_PLUGIN = """
import os
from pathlib import Path

import lmref.conformance.store as store

store.DEFAULT_GOLDEN_DIR = Path(os.environ["LMREF_TEST_DEFAULT_STORE"])  # what open_checked takes as the package's
"""


# --- item 3: `lmref golden --out` -----------------------------------------------------------------


def test_golden_out_keeps_the_users_files_in_an_arch_folder(tmp_path, capsys):
    """issue 10, item 3: rewriting an arch deletes only the files the store's MANIFEST lists,
    never `rm -rf DIR/<arch>` with the user's files in it."""
    root = tmp_path / "store"
    assert main(["golden", "--arch", "gpt2", "--out", str(root)]) == 0
    mine = root / "gpt2" / "mine.txt"
    mine.write_text("my notes")
    nested = root / "gpt2" / "prefill-b2-s7" / "notes.txt"
    nested.write_text("more notes")
    listed = root / "gpt2" / "prefill-b2-s7" / "case.json"
    listed.write_text("stale")
    assert main(["golden", "--arch", "gpt2", "--out", str(root)]) == 0
    assert mine.read_text() == "my notes" and nested.read_text() == "more notes"
    assert json.loads(listed.read_text())["arch"] == "gpt2"  # a listed file was rewritten
    assert marker_kind(root) == "golden-store"


def test_golden_out_refuses_a_directory_it_did_not_write(tmp_path, capsys):
    """issue 10, item 3: a non-empty directory without the golden store's marker is refused."""
    root = tmp_path / "thesis"
    (root / "gpt2").mkdir(parents=True)
    (root / "gpt2" / "chapter1.tex").write_text("precious")
    assert main(["golden", "--arch", "gpt2", "--out", str(root)]) == 2
    out, err = capsys.readouterr()
    assert "lmref golden: error: --out" in err and "not empty and not written by this command" in err, err
    assert out == ""  # not "writing golden cases ... to" a directory it then refuses
    assert (root / "gpt2" / "chapter1.tex").read_text() == "precious"
    assert sorted(p.name for p in root.rglob("*")) == ["chapter1.tex", "gpt2"]


def test_golden_out_deletes_nothing_a_manifest_names_outside_the_arch(tmp_path):
    """issue 10, item 3: a MANIFEST entry that points outside `<arch>/<case>/` (`..`) is never
    deleted when the arch is rewritten."""
    root = tmp_path / "store"
    assert main(["golden", "--arch", "gpt2", "--out", str(root)]) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["gpt2/../../victim.txt"] = "0" * 64
    (root / MANIFEST).write_text(json.dumps(manifest))
    assert main(["golden", "--arch", "gpt2", "--out", str(root)]) == 0
    assert victim.read_text() == "keep me"


def test_the_repository_store_is_marked_and_the_marker_is_not_an_unlisted_file(tmp_path):
    """issue 10, item 3: the package's store holds the golden-store marker, and neither the
    store's unlisted-file check nor `lmref golden --check` counts it."""
    assert marker_kind(DEFAULT_GOLDEN_DIR) == "golden-store"
    assert GoldenStore().unlisted_files() == []
    root = tmp_path / "store"
    assert main(["golden", "--arch", "gpt2", "--out", str(root)]) == 0
    assert (root / MARKER).is_file() and check(root, ["gpt2"]) == []


# --- item 8: the pin, custom stores, unlisted files -------------------------------------------------


def test_the_pin_equals_the_release_store():
    """issue 10, item 8: the package records the sha256 of the release MANIFEST.json."""
    from lmref.conformance.golden_pin import MANIFEST_SHA256

    assert hashlib.sha256((DEFAULT_GOLDEN_DIR / MANIFEST).read_bytes()).hexdigest() == MANIFEST_SHA256


def _llama3_copy(tmp_path: Path) -> Path:
    """A copy of the release store holding llama3's cases (the manifest, untouched, lists all)."""
    root = tmp_path / "golden"
    root.mkdir()
    shutil.copy2(DEFAULT_GOLDEN_DIR / MANIFEST, root / MANIFEST)
    shutil.copytree(DEFAULT_GOLDEN_DIR / "llama3", root / "llama3")
    return root


def _run(tmp_path: Path, root: Path, as_default: bool, *args: str):
    """The suite on `root`, named with --golden-dir or standing in for the package's store."""
    if not as_default:
        return run_suite(tmp_path, "--arch", "llama3", "--golden-dir", str(root), *args)
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "default_store_here.py").write_text(DEFAULT_STORE_PLUGIN)
    return run_suite(tmp_path, "--arch", "llama3", "-p", "default_store_here", *args,
                     env={"LMREF_TEST_DEFAULT_STORE": str(root)}, pythonpath=(str(plugins),))


def _relist(root: Path, rel: str | None = None, drop: str | None = None) -> None:
    """Update the manifest after a tamper: re-hash `rel`, or drop every entry under `drop`."""
    manifest = json.loads((root / MANIFEST).read_text())
    if rel:
        manifest["files"][rel] = sha256_of(root / rel)
    if drop:
        manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith(drop + "/")}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def test_an_untampered_copy_runs_as_the_release_set_or_as_a_custom_store(tmp_path):
    """issue 10, item 8: the same files pass in both roles; the header says which it is."""
    root = _llama3_copy(tmp_path)
    default = _run(tmp_path, root, True)
    assert default.rc == 0, default.out
    assert f"lmref golden set: {GoldenStore().version} (release) at {root}" in default.out
    assert default.report["golden_store"] == "release"
    custom = _run(tmp_path, root, False)
    assert custom.rc == 0, custom.out
    assert f"lmref golden set: custom golden store (manifest {GoldenStore().version}) at {root}" in custom.out
    assert "custom golden store" in custom.out.split("lmref conformance:")[1].splitlines()[0]
    assert custom.report["golden_store"] == "custom"


@pytest.mark.parametrize("as_default", [True, False], ids=["release", "custom"])
def test_an_unlisted_file_in_a_case_fails(tmp_path, as_default):
    """issue 10, item 8: a file the manifest does not list, inside a case, makes that case's
    checks ERRORs, in the release store and in a custom one."""
    root = _llama3_copy(tmp_path)
    extra = root / "llama3" / "prefill-b2-s7" / "notes.txt"
    extra.write_text("not golden")
    run = _run(tmp_path, root, as_default)
    assert run.rc == 1, run.out
    broken = run.results(case="prefill-b2-s7")
    assert broken and all(r["status"] == "ERROR" and f"{extra}: not listed in MANIFEST.json" in r["message"]
                          for r in broken)
    assert set(statuses(run, "decode")) == {"PASS"}


@pytest.mark.parametrize("as_default", [True, False], ids=["release", "custom"])
def test_an_unlisted_case_directory_fails(tmp_path, as_default):
    """issue 10, item 8: a case directory the manifest does not list is refused (usage error
    naming it), in the release store and in a custom one."""
    root = _llama3_copy(tmp_path)
    shutil.copytree(root / "llama3" / "prefill-b2-s7", root / "llama3" / "prefill-b2-s8")
    run = _run(tmp_path, root, as_default)
    assert run.rc == USAGE_ERROR, run.out
    assert "llama3/prefill-b2-s8" in run.out and "not listed in MANIFEST.json" in run.out


def test_a_case_removed_with_its_manifest_entries_is_refused_as_the_release_set(tmp_path):
    """issue 10, item 8: deleting a case and its manifest entries changes the manifest: the
    default store is refused; named with --golden-dir it runs as a custom golden store."""
    root = _llama3_copy(tmp_path)
    shutil.rmtree(root / "llama3" / "long-b2-s160")
    _relist(root, drop="llama3/long-b2-s160")
    default = _run(tmp_path, root, True)
    assert default.rc == USAGE_ERROR, default.out
    assert "differs from the release golden set" in default.out and "--golden-dir" in default.out
    # the package's own path always means the release set: the advice is a copy, never that path
    assert f"run a copy of it as a custom golden store: cp -r {root} STORE, then --golden-dir STORE" in default.out
    custom = _run(tmp_path, root, False)
    assert custom.rc == 0, custom.out
    assert "custom golden store" in custom.out and len(custom.report["results"]) == 9


def test_loosened_case_tolerances_are_refused_as_release_and_shown_when_custom(tmp_path):
    """issue 10, item 8: case.json tolerances loosened (sha updated in the manifest) are
    refused in the default store; in a custom store the run shows the override in the header
    and in each of that case's JSON results."""
    root = _llama3_copy(tmp_path)
    rel = "llama3/prefill-b2-s7/case.json"
    meta = json.loads((root / rel).read_text())
    meta["tolerances"] = {"float64": {"nmse": 1.0, "kl": 1.0}}
    (root / rel).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    _relist(root, rel=rel)
    default = _run(tmp_path, root, True)
    assert default.rc == USAGE_ERROR and "differs from the release golden set" in default.out, default.out
    custom = _run(tmp_path, root, False)
    assert custom.rc == 0, custom.out
    shown = json.dumps(json.loads((root / rel).read_text())["tolerances"])  # as case.json orders it
    assert f"lmref case tolerance overrides: llama3/prefill-b2-s7 {shown}" in custom.out
    assert custom.report["case_tolerance_overrides"] == {"llama3/prefill-b2-s7": meta["tolerances"]}
    for r in custom.results(case="prefill-b2-s7"):
        assert r["metrics"]["case_tolerances"] == meta["tolerances"], r
    assert all("case_tolerances" not in r["metrics"] for r in custom.results(case="prefill-b3-s13"))


def test_the_release_store_without_overrides_says_so(tmp_path):
    """issue 10, item 8: the header says when no case overrides its tolerances."""
    run = run_suite(tmp_path, "--arch", "gpt2", "-k", "test_loss")
    assert run.rc == 0, run.out
    assert "lmref case tolerance overrides: none" in run.out and run.report["case_tolerance_overrides"] == {}


def test_writing_the_package_store_rewrites_the_pin(tmp_path, monkeypatch):
    """issue 10, item 8: `lmref golden` writing the package's own store records its new
    MANIFEST.json sha256 as the release pin (here the package store and the pin file are
    stand-ins in tmp_path)."""
    import lmref.conformance.generate as generate_module
    from lmref.conformance.generate import generate

    store = tmp_path / "golden"
    pin = tmp_path / "golden_pin.py"
    pin.write_text(generate_module.PIN_FILE.read_text())
    monkeypatch.setattr(generate_module, "DEFAULT_GOLDEN_DIR", store)
    monkeypatch.setattr(generate_module, "PIN_FILE", pin)
    generate(store, ["gpt2"], progress=lambda _: None)
    written = hashlib.sha256((store / MANIFEST).read_bytes()).hexdigest()
    assert f'MANIFEST_SHA256 = "{written}"' in pin.read_text()
    other = tmp_path / "elsewhere"
    generate(other, ["gpt2"], progress=lambda _: None)  # any other store leaves the pin alone
    assert f'MANIFEST_SHA256 = "{written}"' in pin.read_text()


def test_golden_check_of_the_package_store_compares_the_pin(monkeypatch):
    """issue 10, item 8: `lmref golden --check` on the package's store reports a pin mismatch."""
    import lmref.conformance.golden_pin as golden_pin

    monkeypatch.setattr(golden_pin, "MANIFEST_SHA256", "0" * 64)
    problems = check(DEFAULT_GOLDEN_DIR, ["gpt2"])
    assert len(problems) == 1 and "differs from the release golden set" in problems[0], problems
