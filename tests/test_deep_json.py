"""A JSON file nested past Python's recursion limit, in each place a command reads one: a
message naming the file and exit 2 (or a refusal of the folder it marks), never a
RecursionError traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from lmref.cli import main
from lmref.conformance.store import DEFAULT_GOLDEN_DIR
from lmref.spec.outputs import GOLDEN_STORE_KIND, MARKER

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "llama3"
    assert main(["export", "--preset", "llama3", "--out", str(out)]) == 0
    return out


def _copy_with_deep(source, name: str, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    (copy / name).write_text(DEEP)
    return copy


def test_a_report(tmp_path, capsys):
    (tmp_path / "deep.json").write_text(DEEP)
    assert main(["report", str(tmp_path / "deep.json")]) == 2
    assert f"{tmp_path / 'deep.json'}: is not JSON (RecursionError" in capsys.readouterr().err


def test_an_export_json(bundle, tmp_path, capsys):
    copy = _copy_with_deep(bundle, "export.json", tmp_path)
    assert main(["validate-onnx", str(copy)]) == 2
    assert f"{copy / 'export.json'}: not readable JSON (RecursionError" in capsys.readouterr().err


def test_an_output_folders_marker(bundle, tmp_path, capsys):
    """A marker that cannot be read is not this command's: the folder is refused, not rewritten."""
    copy = _copy_with_deep(bundle, ".lmref-output.json", tmp_path)
    assert main(["export", "--preset", "llama3", "--out", str(copy)]) == 2
    assert "the directory is not empty and not written by this command" in capsys.readouterr().err
    assert (copy / ".lmref-output.json").read_text() == DEEP


@pytest.mark.parametrize("command", [["golden", "--arch", "llama3", "--out"],
                                     ["check", "--arch", "llama3", "--logits", "unused", "--golden-dir"]])
def test_a_golden_manifest(tmp_path, capsys, command):
    """`lmref golden` writing into the store (which its manifest tells it it owns) and `lmref check`
    reading it; `lmref golden --check` reports the manifest as a mismatch (exit 1) by design."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copytree(DEFAULT_GOLDEN_DIR / "llama3", store / "llama3")
    (store / MARKER).write_text(json.dumps({"kind": GOLDEN_STORE_KIND}))
    (store / "MANIFEST.json").write_text(DEEP)
    assert main([*command, str(store)]) == 2
    err = capsys.readouterr().err
    assert str(store / "MANIFEST.json") in err and "RecursionError" in err and "Traceback" not in err
    assert (store / "MANIFEST.json").read_text() == DEEP
