"""The golden store: regeneration, `lmref golden --check`, and loud failures on corruption."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lmref.conformance.cases import case_config, case_specs, long_seq_len
from lmref.conformance.generate import check, generate
from lmref.conformance.store import DEFAULT_GOLDEN_DIR, GoldenStore, GoldenStoreError, MANIFEST
from lmref.cli import main
from lmref.spec.presets import PRESETS

# The store ships in the package: each arch's four cases take about 1.4 MB (the long case's
# float64 logits, 2 x 160 x 251 x 8 bytes, are most of it), so the budget is per arch and
# grows with the zoo, never per case.
MAX_ARCH_BYTES = 2 * 1024 * 1024


@pytest.fixture
def store_copy(tmp_path):
    """A private copy of the llama3 part of the stored golden, safe to damage."""
    root = tmp_path / "golden"
    generate(root, ["llama3"], progress=lambda _: None)
    return root


def test_stored_golden_matches_a_fresh_regeneration(capsys):
    assert main(["golden", "--check"]) == 0
    assert "golden store OK: 0 problem(s)" in capsys.readouterr().out


def test_store_covers_every_preset_and_stays_small():
    store = GoldenStore()
    assert store.archs() == sorted(PRESETS)
    for arch in PRESETS:
        assert store.case_names(arch) == [s.name for s in case_specs(case_config(arch))]
    for arch in PRESETS:
        size = sum(p.stat().st_size for p in (DEFAULT_GOLDEN_DIR / arch).rglob("*") if p.is_file())
        assert size < MAX_ARCH_BYTES, (arch, size)


def test_cases_cover_batches_odd_lengths_decode_and_long_sequences():
    store = GoldenStore()
    for arch in PRESETS:
        cases = [store.load(arch, name) for name in store.case_names(arch)]
        prefill = [c for c in cases if c.kind == "prefill"]
        assert any(c.tokens.shape[0] >= 2 and c.tokens.shape[1] % 2 for c in prefill)
        decode = [c for c in cases if c.kind == "decode"]
        assert decode and all(1 <= c.prompt_len < c.tokens.shape[1] for c in decode)
        assert max(c.tokens.shape[1] for c in cases) == long_seq_len(cases[0].config)
        assert all(c.expected["loss"].shape == (1,) for c in cases)
        assert any(c.captures for c in cases)


def test_long_case_outruns_the_rope_scaling_original_context():
    config = case_config("llama3.1")
    assert long_seq_len(config) > 2 * config.rope_scaling.original_max_seq_len


def test_alibi_cases_use_a_non_power_of_two_head_count():
    n = case_config("olmo-alibi").n_heads
    assert n & (n - 1) != 0


def test_check_finds_a_tampered_expected_file(store_copy):
    path = next(store_copy.glob("llama3/prefill-b2-s7/expected.safetensors"))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in the last float
    path.write_bytes(bytes(data))
    problems = check(store_copy, ["llama3"])
    assert any("prefill-b2-s7/expected.safetensors" in p and "sha256" in p for p in problems)
    with pytest.raises(GoldenStoreError, match="does not match the manifest"):
        GoldenStore(store_copy).load("llama3", "prefill-b2-s7")


def test_check_finds_a_changed_value_even_with_a_recomputed_manifest(store_copy):
    """A stale store whose hashes were refreshed still fails: values are regenerated."""
    from safetensors.numpy import load_file, save_file

    from lmref.conformance.store import sha256_of

    rel = "llama3/prefill-b3-s13/expected.safetensors"
    arrays = load_file(str(store_copy / rel))
    arrays["logits"] = arrays["logits"] + 1e-6
    save_file(arrays, str(store_copy / rel))
    manifest = json.loads((store_copy / MANIFEST).read_text())
    manifest["files"][rel] = sha256_of(store_copy / rel)
    (store_copy / MANIFEST).write_text(json.dumps(manifest))
    problems = check(store_copy, ["llama3"])
    assert len(problems) == 1
    assert problems[0].startswith("llama3/prefill-b3-s13: logits differs from the regenerated value by 1e-06")


def test_check_finds_missing_and_unlisted_files(store_copy):
    (store_copy / "llama3/decode-b2-p5-n6/inputs.safetensors").unlink()
    (store_copy / "llama3/decode-b2-p5-n6/notes.txt").write_text("scratch")
    problems = check(store_copy, ["llama3"])
    assert any("inputs.safetensors: listed in MANIFEST.json but missing" in p for p in problems)
    assert any("notes.txt: not listed in MANIFEST.json" in p for p in problems)


def test_check_names_an_arch_the_store_lacks(tmp_path):
    generate(tmp_path, ["gpt2"], progress=lambda line: None)
    assert check(tmp_path, ["gpt2", "llama3"]) == [
        "llama3: the store holds no case of this arch (write them with `lmref golden --arch llama3`)"]


def test_unknown_format_version_is_refused(store_copy):
    manifest = json.loads((store_copy / MANIFEST).read_text())
    manifest["format_version"] = 99
    (store_copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(GoldenStoreError, match="unknown golden format version 99"):
        GoldenStore(store_copy)
    assert main(["golden", "--check", "--arch", "llama3", "--out", str(store_copy)]) == 1


def test_missing_manifest_is_refused(tmp_path):
    with pytest.raises(GoldenStoreError, match="no golden manifest"):
        GoldenStore(tmp_path)


def test_golden_cli_writes_one_arch_and_keeps_the_others(tmp_path, capsys):
    root = tmp_path / "g"
    assert main(["golden", "--arch", "gpt2", "--out", str(root)]) == 0
    assert main(["golden", "--arch", "olmo*", "--out", str(root)]) == 0
    assert GoldenStore(root).archs() == ["gpt2", "olmo", "olmo-alibi", "olmo2-7b", "olmoe-1b-7b"]
    assert main(["golden", "--check", "--arch", "gpt2,olmo*", "--out", str(root)]) == 0


def test_golden_cli_rejects_an_unknown_arch(capsys):
    assert main(["golden", "--arch", "mixtral-8x9b", "--check"]) == 2
    assert "unknown arch 'mixtral-8x9b'" in capsys.readouterr().err


def test_regenerated_case_equals_stored_case_exactly_in_inputs(store_copy):
    stored, fresh = GoldenStore(), GoldenStore(store_copy)
    for name in stored.case_names("llama3"):
        a, b = stored.load("llama3", name), fresh.load("llama3", name)
        assert a.meta == b.meta
        np.testing.assert_array_equal(a.tokens, b.tokens)


def test_store_copy_without_the_damaged_arch_still_loads(store_copy):
    shutil.rmtree(store_copy / "llama3" / "long-b2-s160")
    store = GoldenStore(store_copy)
    with pytest.raises(GoldenStoreError, match="missing"):
        store.load("llama3", "long-b2-s160")
    store.load("llama3", "prefill-b2-s7")


def test_case_json_compares_the_smallest_routing_gap_within_the_regeneration_tolerance():
    from lmref.conformance.generate import _same_meta

    meta = {"arch": "mixtral-8x7b", "routing": {"k": 2, "required_margin": 0.1, "smallest_gap": 0.25}}
    moved = {"arch": "mixtral-8x7b", "routing": {"k": 2, "required_margin": 0.1, "smallest_gap": 0.25 * (1 + 1e-13)}}
    assert _same_meta(moved, meta) and _same_meta(meta, meta)
    assert not _same_meta({**moved, "routing": {**moved["routing"], "smallest_gap": 0.2501}}, meta)
    assert not _same_meta({**meta, "routing": {**meta["routing"], "k": 3}}, meta)
    assert not _same_meta({"arch": "mixtral-8x7b"}, meta)


def test_a_write_that_fails_midway_leaves_the_store_whole_and_a_retry_works(tmp_path, monkeypatch):
    """A full disk while an arch's second case is written: the other archs stay listed and whole,
    nothing unlisted is left (no half case, no .tmp), and running the command again succeeds."""
    from lmref.conformance import generate as generating

    root = tmp_path / "golden"
    generate(root, ["gpt2"], progress=lambda line: None)
    real, calls = generating.write_case, []

    def disk_full_on_the_second_case(root_, computed):
        calls.append(computed.spec.name)
        if len(calls) == 2:
            folder = root_ / computed.arch / computed.spec.name
            folder.mkdir(parents=True)
            (folder / "case.json").write_text("{")
            (folder / "expected.safetensors.tmp").write_bytes(b"\0" * 8)
            raise OSError(28, "No space left on device")
        return real(root_, computed)

    monkeypatch.setattr(generating, "write_case", disk_full_on_the_second_case)
    with pytest.raises(OSError, match="No space left"):
        generate(root, ["llama3"], progress=lambda line: None)
    store = GoldenStore(root)
    assert store.archs() == ["gpt2"] and store.unlisted_entries() == [] and not (root / "llama3").exists()
    assert check(root, ["gpt2"]) == []
    monkeypatch.undo()
    generate(root, ["llama3"], progress=lambda line: None)
    assert GoldenStore(root).archs() == ["gpt2", "llama3"] and check(root, ["gpt2", "llama3"]) == []


@pytest.mark.parametrize("command", [
    ["golden", "--arch", "gpt2", "--out"],
    ["golden", "export", "--arch", "llama3", "--format", "safetensors", "--out"],
    ["convert", "--preset", "gpt2", "--out"],
])
def test_no_command_writes_inside_a_golden_store(store_copy, capsys, command):
    """The store lists every file it holds and refuses one it does not list: another output
    inside it (`lmref golden --out` into a folder of another store among them) broke it."""
    listed = sorted(store_copy.rglob("*"))
    inner = store_copy / "inner"
    assert main([*command, str(inner)]) == 2  # refused input, as every command
    assert capsys.readouterr().err.endswith(
        f"--out {inner}: lies inside {store_copy}, a golden store whose manifest lists every file it holds (an "
        "entry it does not list breaks it); write somewhere else\n")
    assert sorted(store_copy.rglob("*")) == listed
    assert check(store_copy, ["llama3"]) == []


@pytest.mark.parametrize("what, said", [("missing", "does not exist"), ("file", "is not a directory"),
                                        ("empty", "holds no MANIFEST.json")])
def test_golden_check_of_no_store_is_bad_input_not_a_mismatch(what, said, tmp_path, capsys):
    root = tmp_path / "store"
    if what == "file":
        root.write_text("")
    elif what == "empty":
        root.mkdir()
    assert main(["golden", "--check", "--arch", "llama3", "--out", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.err == (f"lmref golden: error: --out {root}: {said}, so there is no golden store to check "
                            "(`lmref golden --out DIR` writes one)\n") and captured.out == ""


@pytest.mark.parametrize("argv, prefix", [
    (["convert", "--preset", "gpt5", "--out", "never"], "lmref convert: error: "),
    (["presets", "--arch", "gpt5"], "lmref presets: error: "),
    (["golden", "export", "--arch", "gpt5", "--format", "hf", "--out", "never"], "lmref golden export: error: "),
    (["golden", "export", "--arch", "llama3", "--format", "gguf"], "lmref golden export: error: needs --out"),
])
def test_every_error_line_names_its_command(argv, prefix, capsys):
    """Not `lmref: error:` for an unknown arch, nor `lmref golden:` for golden export's usage."""
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(prefix)
