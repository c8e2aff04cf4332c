"""What `lmref export`, `lmref validate-onnx` and the ONNX runtime path promise (issue 10; the
"Guarantees" section of docs/onnx.md points here):

- `export --out` writes only into a new, empty or its own (marked) directory, never into its
  --checkpoint input, and deletes only files its own export.json lists;
- export.json records the sha256 of every exported file; opening a bundle verifies them and
  names the file that differs;
- validate-onnx compares the graph's weights with a fresh export of the reference weights,
  bit for bit, so a changed weight fails even when export.json was re-hashed to match;
- a truncated external-data file is named (the ONNX path's input checks:
  tests/test_guarantees_onnx_inputs.py);
- every path export.json names resolves inside the bundle directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lmref.cli import main  # noqa: E402
from lmref.convert.checkpoint import save_checkpoint  # noqa: E402
from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.errors import BundleError  # noqa: E402
from lmref.export.exporter import export_onnx  # noqa: E402
from lmref.spec import init_params, tiny  # noqa: E402
from lmref.spec.errors import OutputError  # noqa: E402
from lmref.spec.outputs import MARKER  # noqa: E402

ARCH = "llama3"
SHORT = tiny("llama3", max_seq_len=16)  # vocab 251, a context short enough to run past


def _error(argv, capsys, status=2) -> str:
    assert main(argv) == status
    return capsys.readouterr().err


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """`lmref export --preset llama3 --seed 0 --external-data` (once for the module)."""
    out = tmp_path_factory.mktemp("guarantees") / "llama3-onnx"
    assert main(["export", "--preset", ARCH, "--out", str(out), "--external-data"]) == 0
    return out


@pytest.fixture
def copy(out, tmp_path):
    return shutil.copytree(out, tmp_path / "copy")


# --- `lmref export --out`: new, empty or its own directory; never its input ------------------


def test_export_refuses_a_directory_of_someone_else(tmp_path, capsys):
    """issue 10, export --out (the rule of items 1-4): a non-empty directory that lmref export
    did not write is refused, and the user's files (even ones named like the export's) stay."""
    target = tmp_path / "mine"
    target.mkdir()
    (target / "model.onnx").write_text("my own model")
    (target / "tokenizer.json").write_text("my own tokenizer")
    (target / "notes.txt").write_text("notes")
    err = _error(["export", "--preset", ARCH, "--out", str(target)], capsys)
    assert f"--out {target}: the directory is not empty and not written by this command" in err
    assert sorted(p.name for p in target.iterdir()) == ["model.onnx", "notes.txt", "tokenizer.json"]
    assert (target / "model.onnx").read_text() == "my own model"
    assert (target / "tokenizer.json").read_text() == "my own tokenizer"


def test_export_refuses_an_existing_file(tmp_path, capsys):
    """issue 10, export --out: a file given as --out is refused, not replaced."""
    (tmp_path / "f").write_text("x")
    assert f"--out {tmp_path / 'f'}: is a file, not a directory" in _error(
        ["export", "--preset", ARCH, "--out", str(tmp_path / "f")], capsys)
    assert (tmp_path / "f").read_text() == "x"


def test_export_never_writes_into_its_checkpoint(tmp_path, capsys):
    """issue 10, export --out: the --checkpoint input is never the output, nor holds it, nor
    lies inside it."""
    config = tiny(ARCH)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, config, init_params(config, 0))
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    assert "is the command's own input" in _error(
        ["export", "--checkpoint", str(ckpt), "--out", str(ckpt)], capsys)
    assert "lies inside the input" in _error(
        ["export", "--checkpoint", str(ckpt), "--out", str(ckpt / "onnx")], capsys)
    assert "holds the input" in _error(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path)], capsys)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_export_rewrites_its_own_directory_and_deletes_only_its_files(tmp_path, capsys):
    """issue 10, export --out: a directory marked as an onnx-export is rewritten; the files its
    export.json lists are replaced (model.onnx.data goes when the new export has none), files
    the user added stay, and a user's file under a name the export writes is refused."""
    target = tmp_path / "o"
    assert main(["export", "--preset", ARCH, "--out", str(target), "--external-data"]) == 0
    assert json.loads((target / MARKER).read_text())["kind"] == "onnx-export"
    (target / "notes.txt").write_text("mine")
    (target / "tokenizer.json").write_text("the user's, not the export's")
    capsys.readouterr()
    assert main(["export", "--preset", ARCH, "--seed", "3", "--out", str(target)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"{target}: config.json, export.json, model.onnx")  # not yours
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [MARKER, "config.json", "export.json", "model.onnx", "notes.txt", "tokenizer.json"])
    assert (target / "notes.txt").read_text() == "mine"
    assert (target / "tokenizer.json").read_text() == "the user's, not the export's"
    assert json.loads((target / "export.json").read_text())["source"]["seed"] == 3
    capsys.readouterr()
    (target / "model.onnx.data").write_text("the user's")
    err = _error(["export", "--preset", ARCH, "--out", str(target), "--external-data"], capsys)
    assert f"{target / 'model.onnx.data'} is in the way and export.json does not list it" in err
    assert (target / "model.onnx.data").read_text() == "the user's"
    assert open_bundle(target).manifest["source"]["seed"] == 3  # the refused export left the last one whole


def test_export_onnx_claims_its_directory(tmp_path):
    """issue 10, export --out: the library call (what OnnxAdapter and the benchmarks use)
    claims its directory too."""
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OutputError, match="not written by this command"):
        export_onnx(SHORT, init_params(SHORT, 0), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# --- item 10: sha256 of every file; the weights against the reference, bit for bit ----------


def _embed_offset(bundle_dir, row: int) -> int:
    """Byte offset in model.onnx.data of embed.tokens[row, 0] (float32)."""
    from onnx.external_data_helper import ExternalDataInfo

    model = onnx.load(str(bundle_dir / "model.onnx"), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.name == "model.embed.tokens.weight")
    return ExternalDataInfo(tensor).offset + 4 * row * tensor.dims[1]


def _flip(bundle_dir, row: int = 138) -> tuple[float, float]:
    """Invert every bit of the most significant byte of embed.tokens[row, 0] in
    model.onnx.data (the byte that holds the sign and the exponent); (before, after)."""
    path = bundle_dir / "model.onnx.data"
    data = bytearray(path.read_bytes())
    at = _embed_offset(bundle_dir, row)
    before = float(np.frombuffer(bytes(data[at : at + 4]), np.float32)[0])
    data[at + 3] ^= 0xFF
    path.write_bytes(bytes(data))
    return before, float(np.frombuffer(bytes(data[at : at + 4]), np.float32)[0])


def _rehash(bundle_dir) -> None:
    """Make export.json agree with the files as they are now."""
    manifest = json.loads((bundle_dir / "export.json").read_text())
    for name, entry in manifest.get("files", {}).items():
        entry.update(sha256=_sha256(bundle_dir / name), bytes=(bundle_dir / name).stat().st_size)
    (bundle_dir / "export.json").write_text(json.dumps(manifest))


def test_manifest_records_the_sha256_of_every_file(out):
    """issue 10, item 10: export.json records the sha256 and size of every exported file."""
    manifest = json.loads((out / "export.json").read_text())
    assert sorted(manifest["files"]) == ["config.json", "model.onnx", "model.onnx.data"]
    for name, entry in manifest.get("files", {}).items():
        assert entry == {"sha256": _sha256(out / name), "bytes": (out / name).stat().st_size}


def test_a_flipped_weight_byte_is_named_when_the_bundle_opens(copy, capsys):
    """issue 10, item 10: one byte flipped in the weights (embed.tokens[138, 0] from about -0.03
    to about 476, as the issue found) fails open_bundle, naming the file: validate-onnx and
    generate --onnx refuse it."""
    before, after = _flip(copy)
    assert abs(before) < 0.2 and abs(after) > 100
    message = f"{copy / 'model.onnx.data'}: sha256 differs from the one export.json records"
    assert message in _error(["validate-onnx", str(copy)], capsys)
    assert message in _error(["generate", "--onnx", str(copy), "--prompt", "x"], capsys)
    with pytest.raises(BundleError, match="model.onnx.data: sha256 differs"):
        open_bundle(copy)


def test_a_changed_config_json_with_the_same_graph_is_named(copy, capsys):
    """issue 10, item 10: config.json is hashed too (a field the graph check cannot see)."""
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(config, indent=4))
    assert f"{copy / 'config.json'}: sha256 differs" in _error(["validate-onnx", str(copy)], capsys)


def test_a_changed_byte_in_the_graphs_embedded_config_is_named(copy, capsys):
    """A byte changed inside the config model.onnx embeds (its metadata, no longer JSON) is
    refused as a changed file, naming it, by validate-onnx and generate --onnx: the graph's
    digest is checked before its metadata is parsed (it was a bare JSON error, a traceback
    in generate)."""
    path = copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[data.rindex(b'"vocab_size"')] ^= 0x01  # the key's opening quote: the metadata is no JSON
    path.write_bytes(bytes(data))
    message = f"{path}: sha256 differs from the one export.json records"
    assert message in _error(["validate-onnx", str(copy)], capsys)
    err = _error(["generate", "--onnx", str(copy), "--prompt", "x", "--max-new-tokens", "3"], capsys)
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("mask", [0x01, 0x80])  # a quote made '#'; a byte made no UTF-8
def test_unreadable_embedded_config_is_named_even_when_rehashed(copy, capsys, mask):
    """With export.json re-hashed to match, a graph whose embedded config is no JSON (or no
    UTF-8) is refused naming the graph and its metadata, by both commands, not a traceback."""
    path = copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[data.rindex(b'"vocab_size"')] ^= mask
    path.write_bytes(bytes(data))
    _rehash(copy)
    for argv in (["validate-onnx", str(copy)], ["generate", "--onnx", str(copy), "--prompt", "x"]):
        err = _error(argv, capsys)
        assert "does not match the graph model.onnx: the graph's lmref.config metadata is not readable JSON" in err


def test_validate_onnx_passes_the_weights_check(out, capsys):
    """issue 10, item 10: validate-onnx reports the weights check, bit for bit."""
    assert main(["validate-onnx", str(out), "--steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "  PASS weights: the graph's " in text and "equal those of a fresh export of the reference" in text
    assert "validate-onnx: PASS (4 of 4 checks passed" in text and "weights equal the reference" in text


def test_a_flipped_weight_byte_fails_validate_onnx_even_when_rehashed(copy, capsys):
    """issue 10, item 10: with export.json re-hashed to match the altered file, validate-onnx
    still fails: it compares each initializer with a fresh export of the reference weights
    and names the one that differs, with the first entry that differs."""
    before, after = _flip(copy)
    _rehash(copy)
    open_bundle(copy)  # the hashes agree now
    assert main(["validate-onnx", str(copy), "--steps", "2"]) == 1
    text = capsys.readouterr().out
    assert "  FAIL weights: " in text
    assert "model.embed.tokens.weight (embed.tokens): 1 of 32128 entries differ, first at [138, 0]" in text
    assert f"{after:.6g} in the graph, {before:.6g} in the reference" in text
    assert "validate-onnx: FAIL" in text


def test_weights_swapped_between_layers_fail_validate_onnx(copy, capsys):
    """issue 10, item 10: two initializers of one shape swapped (a graph whose multiset of
    weights is right) fail too: the comparison is per initializer."""
    from onnx.external_data_helper import ExternalDataInfo

    model = onnx.load(str(copy / "model.onnx"), load_external_data=False)
    norms = [t for t in model.graph.initializer if t.name.endswith("attn_norm.weight")]
    a, b = (ExternalDataInfo(t) for t in norms[:2])
    data = bytearray((copy / "model.onnx.data").read_bytes())
    chunk_a, chunk_b = bytes(data[a.offset : a.offset + a.length]), bytes(data[b.offset : b.offset + b.length])
    assert chunk_a != chunk_b
    data[a.offset : a.offset + a.length], data[b.offset : b.offset + b.length] = chunk_b, chunk_a
    (copy / "model.onnx.data").write_bytes(bytes(data))
    _rehash(copy)
    assert main(["validate-onnx", str(copy), "--steps", "2"]) == 1
    text = capsys.readouterr().out
    assert "  FAIL weights: " in text and "model.layers.0.attn_norm.weight (layers.0.attn_norm.weight)" in text


def _rename_initializer(bundle_dir, old: str, new: str) -> None:
    """Rename an initializer of model.onnx (and its uses), as another torch would name it."""
    model = onnx.load(str(bundle_dir / "model.onnx"), load_external_data=False)
    next(t for t in model.graph.initializer if t.name == old).name = new
    for node in model.graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
    onnx.save(model, str(bundle_dir / "model.onnx"))


def test_weights_are_matched_by_content_when_the_names_differ(copy):
    """issue 10, item 10: a graph whose folded initializers another exporter version named
    otherwise is compared by content: the same values pass, a changed byte still fails."""
    from lmref.export.validate import check_weights

    params = init_params(tiny(ARCH), 0)
    _rename_initializer(copy, "model.final_norm.weight", "renamed_by_another_torch")
    _rehash(copy)
    check = check_weights(open_bundle(copy), params)
    assert not check.failed and "matched by content" in check.line(), check.line()
    _flip(copy)
    _rehash(copy)
    check = check_weights(open_bundle(copy), params)
    assert check.failed and "matched by content" in check.line()
    assert "model.embed.tokens.weight: no initializer of the reference export holds its float32[251, 128] values" \
        in check.line()


def test_a_truncated_external_data_file_is_named(copy, capsys):
    """issue 10, item 13: a truncated model.onnx.data is a clear error naming the file (it was
    an onnxruntime traceback), even with export.json re-hashed to match."""
    path = copy / "model.onnx.data"
    path.write_bytes(path.read_bytes()[:100_000])
    _rehash(copy)
    err = _error(["validate-onnx", str(copy)], capsys)
    assert f"{path}: truncated: 100000 bytes, but model.onnx reads" in err
    assert "Traceback" not in err


# --- item 15: every path export.json names stays inside the bundle --------------------------


@pytest.mark.parametrize("edit, named", [
    (lambda m, root: m | {"model": "../outside/model.onnx"}, "../outside/model.onnx"),
    (lambda m, root: m | {"model": str(root.parent / "outside" / "model.onnx")}, "outside/model.onnx"),
    (lambda m, root: m | {"files": m["files"] | {"../outside/model.onnx": m["files"]["model.onnx"]}},
     "../outside/model.onnx"),
    (lambda m, root: m | {"tokenizer": {"kind": "bpe", "vocab_size": 251, "file": "../outside/tokenizer.json"}},
     "../outside/tokenizer.json"),
])
def test_paths_in_export_json_stay_inside_the_bundle(copy, capsys, edit, named):
    """issue 10, item 15: the model path, any file export.json lists and the tokenizer file
    must resolve inside the bundle directory, or the bundle is refused naming the path."""
    outside = copy.parent / "outside"
    outside.mkdir()
    shutil.copy(copy / "model.onnx", outside / "model.onnx")
    shutil.copy(copy / "model.onnx.data", outside / "model.onnx.data")
    (outside / "tokenizer.json").write_text("{}")
    manifest = json.loads((copy / "export.json").read_text())
    (copy / "export.json").write_text(json.dumps(edit(manifest, copy)))
    for argv in (["validate-onnx", str(copy)], ["generate", "--onnx", str(copy), "--prompt", "x"]):
        err = _error(argv, capsys)
        assert named in err and "resolves outside the bundle directory" in err


def test_a_symlink_out_of_the_bundle_is_refused(copy, capsys):
    """issue 10, item 15: a listed file that is a link to somewhere else resolves outside."""
    outside = copy.parent / "outside"
    outside.mkdir()
    shutil.move(copy / "model.onnx.data", outside / "model.onnx.data")
    (copy / "model.onnx.data").symlink_to(outside / "model.onnx.data")
    err = _error(["validate-onnx", str(copy)], capsys)
    assert "model.onnx.data" in err and "resolves outside the bundle directory" in err
