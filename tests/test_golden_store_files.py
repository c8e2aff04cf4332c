"""A custom golden store whose files were made by hand, their digests updated in its manifest:
every command that reads it refuses a file that is not what the suite reads, naming it (exit 2,
or an ERROR of the case's checks), never a traceback; `lmref golden export` then writes
nothing, and one that fails while writing removes what it wrote."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from lmref.cli import main
from lmref.conformance import golden_export
from lmref.conformance.store import GoldenStore
from tests.test_conformance_plugin import _copy_store, run_suite

CASE = "llama3/prefill-b2-s7/case.json"


def _with_config(config: dict, field: str, value) -> str:
    return json.dumps(config | {field: value})


def _edit(text: str, change) -> str:
    meta = json.loads(text)
    change(meta)
    return json.dumps(meta)


# {what: (the new case.json from the old, what the refusal says)}
CORRUPTIONS = {
    "not JSON": (lambda text: "{", "not valid JSON (JSONDecodeError"),
    "nested past the stack": (lambda text: "[" * 100_000 + "]" * 100_000, "not valid JSON (RecursionError"),
    "a list": (lambda text: "[]", "holds a JSON list, not an object"),
    "a config field": (lambda text: _edit(text, lambda m: m["config"].update(d_model="x")),
                       "config: d_model: must be a positive integer, got 'x'"),
    "a tolerance": (lambda text: _edit(text, lambda m: m.update(tolerances={"float32": {"nmse": "x"}})),
                    "float32.nmse must be a number, got 'x'"),
    "the seed": (lambda text: _edit(text, lambda m: m["weights"].update(seed="0")), "weights.seed must be an integer"),
}


def _store_with(tmp_path: Path, new_case_json) -> Path:
    """A copy of the store's llama3 cases with CASE rewritten, and its digest in the manifest."""
    root = _copy_store(tmp_path)
    path = root / CASE
    path.write_text(new_case_json(path.read_text()))
    manifest = json.loads((root / "MANIFEST.json").read_text())
    manifest["files"][CASE] = hashlib.sha256(path.read_bytes()).hexdigest()
    (root / "MANIFEST.json").write_text(json.dumps(manifest))
    return root


def _logits_folder(tmp_path: Path) -> Path:
    """The release store's llama3 logits, one file per case, as `lmref check` reads them."""
    folder, store = tmp_path / "logits", GoldenStore()
    folder.mkdir()
    for name in store.case_names("llama3"):
        np.save(folder / f"{name}.npy", store.load("llama3", name).expected["logits"])
    return folder


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_check_and_golden_export_refuse_the_file_by_name(tmp_path, capsys, corruption):
    make, says = CORRUPTIONS[corruption]
    root = _store_with(tmp_path, make)
    logits = _logits_folder(tmp_path)
    assert main(["check", "--arch", "llama3", "--logits", str(logits), "--golden-dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"{root / CASE}: {says}" in err and "Traceback" not in err, err
    out = tmp_path / "export"
    assert main(["golden", "export", "--arch", "llama3", "--format", "safetensors", "--out", str(out),
                 "--golden-dir", str(root)]) == 2
    assert f"{root / CASE}: {says}" in capsys.readouterr().err
    assert not out.exists()


def test_the_suite_makes_the_cases_checks_errors_naming_the_file(tmp_path):
    root = _store_with(tmp_path, CORRUPTIONS["a config field"][0])
    run = run_suite(tmp_path, "--arch", "llama3", "--golden-dir", str(root))
    assert run.rc == 1, run.out
    broken = run.results(case="prefill-b2-s7")
    assert broken and all(r["status"] == "ERROR" and f"{root / CASE}: config: d_model" in r["message"] for r in broken)
    assert {r["status"] for r in run.results(case="prefill-b3-s13")} == {"PASS"}


@pytest.mark.parametrize("out_name, existing", [("export", False), ("new/parents/export", False), ("export", True)],
                         ids=["new folder", "new parents too", "empty folder"])
def test_an_export_that_fails_while_writing_removes_what_it_wrote(tmp_path, monkeypatch, out_name, existing):
    written = []

    def weights_then_a_full_disk(case, fmt, directory):
        if written:
            raise OSError(28, "No space left on device")
        written.append(case.name)

    monkeypatch.setattr(golden_export, "_write_weights", weights_then_a_full_disk)
    out = tmp_path / out_name
    if existing:
        out.mkdir()
    with pytest.raises(OSError, match="No space left"):
        golden_export.export_golden("llama3", "safetensors", out)
    assert written and (list(out.iterdir()) == [] if existing else list(tmp_path.iterdir()) == [])
