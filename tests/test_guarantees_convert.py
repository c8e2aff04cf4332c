"""What `lmref convert` and the converters promise about the user's files (issue 10;
docs/huggingface.md, "Where conversion writes", and docs/training.md, "Guarantees"): a command
never writes into its own input nor into a directory it did not write; the library functions
that write directories (`save_checkpoint`, `to_hf`) follow the same rule; a preset too large for
the memory available is refused before it is allocated; a shard index names files inside its
model directory only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lmref.cli import main
from lmref.commands import convert as convert_commands
from lmref.convert import from_hf, load_checkpoint, save_checkpoint, to_hf
from lmref.convert.errors import ConversionError
from lmref.spec import init_params, tiny
from lmref.spec.errors import OutputError
from lmref.spec.outputs import MARKER, marker_kind
from tests.train_helpers import run_cli


def _files(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _convert(capsys, *argv) -> tuple[int, str]:
    status = main(["convert", *map(str, argv)])
    return status, capsys.readouterr().err


@pytest.fixture
def ckpt(tmp_path):
    out = tmp_path / "ckpt"
    assert main(["convert", "--preset", "gpt2", "--out", str(out)]) == 0
    return out


# --- item 4: never into its own input, never into a directory it did not write -----------------


def test_to_hf_into_its_own_input_is_refused(ckpt, capsys):
    """issue 10, item 4: `lmref convert --to-hf CKPT --out CKPT` replaced the checkpoint's
    config.json, so the checkpoint no longer loaded."""
    before = _files(ckpt)
    status, err = _convert(capsys, "--to-hf", ckpt, "--out", ckpt)
    assert status == 2 and f"--out {ckpt}: is the command's own input; write somewhere else" in err
    status, err = _convert(capsys, "--to-hf", ckpt, "--out", ckpt / "hf")
    assert status == 2 and f"lies inside the input {ckpt}" in err
    status, err = _convert(capsys, "--from-hf", ckpt.parent / "hf", "--out", ckpt.parent)
    assert status == 2 and "holds the input" in err
    assert _files(ckpt) == before and load_checkpoint(ckpt)[0] == tiny("gpt2")


def test_from_hf_into_a_directory_holding_the_users_config_is_refused(ckpt, tmp_path, capsys):
    """issue 10, item 4: `--from-hf DIR --out X` overwrote the user's own X/config.json."""
    hf = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(ckpt), "--out", str(hf)]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}\n')
    status, err = _convert(capsys, "--from-hf", hf, "--out", mine)
    assert status == 2
    assert f"--out {mine}: the directory is not empty and not written by this command (it holds config.json)" in err
    assert _files(mine) == {"config.json": b'{"my": "settings"}\n'}


def test_every_output_is_claimed_and_may_be_rewritten_by_its_own_kind(ckpt, tmp_path, capsys):
    """issue 10, item 4: each output is marked with its kind; a command rewrites its own kind's
    output, never another kind's (an HF directory over an lmref checkpoint mixes two formats)."""
    assert marker_kind(ckpt) == "lmref-checkpoint"
    assert main(["convert", "--preset", "gpt2", "--seed", "1", "--out", str(ckpt)]) == 0  # its own: rewritten
    hf = tmp_path / "hf"
    assert main(["convert", "--preset", "gpt2", "--format", "hf", "--out", str(hf)]) == 0
    assert marker_kind(hf) == "hf-model"
    assert main(["convert", "--to-hf", str(ckpt), "--out", str(hf)]) == 0
    capsys.readouterr()
    status, err = _convert(capsys, "--preset", "gpt2", "--format", "hf", "--out", ckpt)
    assert status == 2 and "not empty and marked as another kind of lmref output (lmref-checkpoint)" in err


def test_the_library_writers_claim_their_directory(tmp_path):
    """issue 10, item 4: `save_checkpoint` and `to_hf` called from Python are as safe as the
    command: a directory of somebody else's is refused, untouched."""
    config = tiny("gpt2")
    params = init_params(config, 0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("mine\n")
    for write in (lambda out: save_checkpoint(out, config, params), lambda out: to_hf(config, params, out)):
        with pytest.raises(OutputError, match="the directory is not empty and not written by this command"):
            write(mine)
        assert _files(mine) == {"config.json": b"mine\n"}
    (tmp_path / "file").write_text("mine\n")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        save_checkpoint(tmp_path / "file", config, params)
    save_checkpoint(tmp_path / "ckpt", config, params)
    with pytest.raises(OutputError, match=r"marked as another kind of lmref output \(lmref-checkpoint\)"):
        to_hf(config, params, tmp_path / "ckpt")
    assert save_checkpoint(tmp_path / "ckpt", config, params) == tmp_path / "ckpt"  # its own, rewritten
    assert (tmp_path / "ckpt" / MARKER).is_file()


# --- item 12: a preset that cannot fit is refused before it is allocated ------------------------


def test_full_preset_too_large_for_memory_is_refused_with_the_estimate(tmp_path):
    """issue 10, item 12: `lmref convert --preset X --full` allocated until the machine died.
    The child runs under a 4 GiB address-space limit, so a missing guard fails this test only."""
    out = tmp_path / "out"
    result = run_cli("convert", "--preset", "llama2-70b", "--full", "--out", out, timeout=120, address_space=4 << 30)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "lmref convert: error: --preset llama2-70b --full (68,976,648,192 float64 parameters) needs about" in \
        result.stderr
    assert "more than the" in result.stderr and "pass --force-memory" in result.stderr
    assert not out.exists()


def test_force_memory_converts_what_the_estimate_refuses(tmp_path, capsys, monkeypatch):
    """issue 10, item 12: --force-memory (the same flag as `lmref train`'s) overrides the guard."""
    stand_in = tiny("gpt2", n_layers=3, name="gpt2")
    monkeypatch.setattr(convert_commands, "get_preset", lambda name: stand_in)
    monkeypatch.setattr("lmref.spec.resources.available_bytes", lambda: 1 << 10)
    status, err = _convert(capsys, "--preset", "gpt2", "--full", "--out", tmp_path / "a")
    assert status == 2 and "needs about" in err and not (tmp_path / "a").exists()
    assert main(["convert", "--preset", "gpt2", "--full", "--force-memory", "--out", str(tmp_path / "a")]) == 0
    assert load_checkpoint(tmp_path / "a")[0] == stand_in


# --- item 15: a shard index names files inside its model directory ------------------------------


def _sharded_outside(tmp_path, name_for) -> tuple:
    """An HF directory whose index maps every key to one shard file outside it."""
    config = tiny("gpt2")
    model = tmp_path / "model"
    to_hf(config, init_params(config, 0), model)
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    outside = tmp_path / "x.safetensors"
    save_file(tensors, str(outside), metadata={"format": "pt"})
    name = name_for(outside)
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: name for k in tensors}}))
    return model, name


@pytest.mark.parametrize("how", ["parent", "absolute", "nested-parent"])
def test_a_shard_index_naming_a_file_outside_the_model_is_refused(tmp_path, capsys, how):
    """issue 10, item 15: model.safetensors.index.json naming `../x.safetensors` or an absolute
    path read a file outside the model directory."""
    name_for = {"parent": lambda p: "../x.safetensors", "absolute": str,
                "nested-parent": lambda p: "sub/../../x.safetensors"}[how]
    model, name = _sharded_outside(tmp_path, name_for)
    with pytest.raises(ConversionError, match="which is not inside the model directory"):
        from_hf(model)
    status, err = _convert(capsys, "--from-hf", model, "--out", tmp_path / "out")
    assert status == 2 and f"model.safetensors.index.json: names the shard {name!r}" in err
    assert not (tmp_path / "out").exists()


def test_a_shard_in_a_subdirectory_of_the_model_is_read(tmp_path):
    """issue 10, item 15: the rule is 'inside', not 'next to': a shard in a subfolder is fine."""
    config = tiny("gpt2")
    model = tmp_path / "model"
    to_hf(config, init_params(config, 0), model)
    (model / "shards").mkdir()
    (model / "model.safetensors").rename(model / "shards" / "all.safetensors")
    keys = load_file(model / "shards" / "all.safetensors")
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "shards/all.safetensors" for k in keys}}))
    _, params = from_hf(model)
    assert all(np.array_equal(params[k], v) for k, v in init_params(config, 0).items())


# --- item 17: --out naming an existing file ---------------------------------------------------


@pytest.mark.parametrize("source", [["--preset", "gpt2"], ["--preset", "gpt2", "--format", "hf"]])
def test_out_naming_an_existing_file_is_refused(tmp_path, capsys, source):
    """issue 10, item 17: `lmref convert --out FILE` was a FileExistsError traceback."""
    path = tmp_path / "notes.txt"
    path.write_text("mine\n")
    status, err = _convert(capsys, *source, "--out", path)
    assert status == 2 and f"--out {path}: is a file, not a directory" in err
    assert path.read_text() == "mine\n"


# --- a write that fails: one line, and what was there before stays whole ------------------------


@pytest.mark.parametrize("fmt, writer", [("lmref", "lmref.convert.checkpoint"), ("hf", "lmref.convert.hf")])
def test_a_rewrite_that_fails_midway_leaves_the_old_output_whole(tmp_path, capsys, monkeypatch, fmt, writer):
    """The weights' write starts, then the disk is full: the new config must not sit beside the
    old weights (a checkpoint that loads, with another model's weights), and nothing is left."""
    import importlib

    out = tmp_path / "out"
    assert _convert(capsys, "--preset", "llama1", "--format", fmt, "--out", out)[0] == 0
    before = _files(out)

    def disk_full(path, tensors, metadata):
        path.write_bytes(b"\0" * 64)
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(importlib.import_module(writer), "write_file", disk_full)
    status, err = _convert(capsys, "--preset", "llama2", "--seed", "7", "--format", fmt, "--out", out)
    assert status == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert _files(out) == before
    monkeypatch.undo()
    weights = "params.safetensors" if fmt == "lmref" else "model.safetensors"
    (out / f".{weights}.tmp-99999").write_bytes(b"partial")  # what a writer killed mid-write leaves
    assert _convert(capsys, "--preset", "llama2", "--seed", "7", "--format", fmt, "--out", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # the killed writer's temporary is gone


def test_out_a_link_to_nothing_or_a_folder_that_takes_no_file_is_refused(tmp_path, capsys, monkeypatch):
    """A dangling symlink was a FileExistsError traceback; a folder without write permission (as
    a user other than root) a PermissionError one, after the work was done."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    status, err = _convert(capsys, "--preset", "gpt2", "--out", link)
    assert status == 2 and f"--out {link}: is a link to {tmp_path / 'nowhere'}, which does not exist" in err
    assert not (tmp_path / "nowhere").exists()

    real_access = os.access  # root may write anywhere: the folder is made read-only by the system's answer
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != tmp_path and real_access(path, mode, **kw))
    status, err = _convert(capsys, "--preset", "gpt2", "--out", tmp_path / "new")
    assert status == 2 and f"--out {tmp_path / 'new'}: cannot be written (Permission denied)" in err
    assert not (tmp_path / "new").exists()


DEEP = "1000000000000 is not supported: the weights hold 2 layer(s) at most"


@pytest.mark.parametrize("source, arch, said", [
    ("--to-hf", "llama3", "1,000,000,000,000 layers, but the weights hold"),
    ("--from-hf", "llama3", f"num_hidden_layers={DEEP}"),
    # these build a per-layer list while the config is read (layer_types, the MoE pattern): the
    # count is checked against the tensor names' layer indices as it is read, before the list
    ("--from-hf", "qwen2-7b", f"num_hidden_layers={DEEP}"),
    ("--from-hf", "gemma2-9b", f"num_hidden_layers={DEEP}"),
    ("--from-hf", "qwen3-30b-a3b", f"num_hidden_layers={DEEP}"),
    ("--from-hf", "gpt2", f"n_layer={DEEP}"),
])
def test_a_config_far_deeper_than_its_weights_is_refused_by_the_count(tmp_path, source, arch, said):
    """config.json's depth edited to 10**12: refused before any table of names or per-layer list
    is built, so in constant memory (the child runs under a 2 GiB address-space cap; the table
    would need terabytes); the message says what the weights hold."""
    src = tmp_path / "src"
    fmt = "hf" if source == "--from-hf" else "lmref"
    assert main(["convert", "--preset", arch, "--format", fmt, "--out", str(src)]) == 0
    config = json.loads((src / "config.json").read_text())
    key = next(k for k in ("num_hidden_layers", "n_layer", "n_layers") if k in config)
    config[key] = 10**12
    (src / "config.json").write_text(json.dumps(config))
    proc = run_cli("convert", source, str(src), "--out", str(tmp_path / "out"), address_space=2 * 2**30)
    assert proc.returncode == 2, proc.stderr
    assert said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("direction", ["--to-hf", "--from-hf"])
def test_a_weight_the_dtype_cannot_hold_is_refused_not_written_as_inf(tmp_path, capsys, direction):
    """`--dtype float16` of a weight of 1e10 wrote inf (NumPy's cast, a RuntimeWarning at most)."""
    config = tiny("llama3")
    params = init_params(config, 0)
    params["layers.0.attn.wq"][0, 0] = 1e10
    source = save_checkpoint(tmp_path / "ckpt", config, params)
    if direction == "--from-hf":
        source = to_hf(config, params, tmp_path / "hf")
    status, err = _convert(capsys, direction, source, "--out", tmp_path / "out", "--dtype", "float16")
    assert status == 2 and "does not fit float16: its largest magnitude is 1e+10" in err, err
    assert not (tmp_path / "out").exists()


def _modes(directory) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mode & 0o777 for p in directory.rglob("*") if p.is_file()}


def test_every_file_written_has_the_mode_the_umask_gives(tmp_path):
    """safetensors keeps its private temporary's mode 0600, which an engine running as another
    user cannot read; lmref's weights get the mode of any new file (0644 under umask 022)."""
    mask = os.umask(0o027)
    try:
        for argv in (["convert", "--preset", "gpt2", "--out", tmp_path / "lmref"],
                     ["convert", "--preset", "gpt2", "--format", "hf", "--out", tmp_path / "hf"],
                     ["golden", "export", "--arch", "gpt2", "--format", "safetensors", "--out", tmp_path / "golden"]):
            assert main([str(a) for a in argv]) == 0
    finally:
        os.umask(mask)
    modes = _modes(tmp_path)
    assert any(name.endswith(".safetensors") for name in modes)
    assert modes == dict.fromkeys(modes, 0o640)
