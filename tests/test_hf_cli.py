"""`lmref convert` end to end on a temporary directory: preset -> lmref checkpoint -> HF -> lmref."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lmref.commands import convert as convert_commands
from lmref.convert import from_hf, load_checkpoint
from lmref.cli import main
from lmref.spec import init_params, param_count, tiny


def _same(got: dict, want: dict) -> bool:
    return list(got) == list(want) and all(
        got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want)


def test_preset_to_checkpoint_to_hf_and_back(tmp_path, capsys):
    ckpt, hf, back = tmp_path / "ckpt", tmp_path / "hf", tmp_path / "back"
    assert main(["convert", "--preset", "llama3.1", "--seed", "3", "--out", str(ckpt)]) == 0
    assert "wrote lmref checkpoint" in capsys.readouterr().out
    config, params = load_checkpoint(ckpt)
    assert config == tiny("llama3.1")
    assert _same(params, init_params(config, 3))

    assert main(["convert", "--to-hf", str(ckpt), "--out", str(hf)]) == 0
    assert "wrote Hugging Face model (llama)" in capsys.readouterr().out
    assert json.loads((hf / "config.json").read_text())["rope_parameters"]["rope_type"] == "llama3"
    hf_config, hf_params = from_hf(hf)
    assert hf_config == config and _same(hf_params, params)

    assert main(["convert", "--from-hf", str(hf), "--out", str(back)]) == 0
    back_config, back_params = load_checkpoint(back)
    assert back_config == config and _same(back_params, params)


def test_preset_straight_to_hf_in_float32(tmp_path):
    out = tmp_path / "mpt-hf"
    assert main(["convert", "--preset", "mpt", "--format", "hf", "--dtype", "float32", "--out", str(out)]) == 0
    config, params = from_hf(out)
    assert config == tiny("mpt")
    assert _same(params, {k: v.astype(np.float32) for k, v in init_params(config, 0).items()})


def test_full_takes_the_published_preset_not_tiny(tmp_path, capsys, monkeypatch):
    """--full reads get_preset; a stand-in keeps the test small (gpt2 itself is 1 GB in float64)."""
    stand_in = tiny("gpt2", n_layers=3, name="gpt2")
    monkeypatch.setattr(convert_commands, "get_preset", lambda name: stand_in if name == "gpt2" else None)
    assert main(["convert", "--preset", "gpt2", "--full", "--out", str(tmp_path)]) == 0
    assert f"--full: allocating {param_count(stand_in):,} float64 parameters" in capsys.readouterr().out
    assert load_checkpoint(tmp_path)[0] == stand_in


@pytest.mark.parametrize("argv, message", [
    (["--from-hf", "x", "--seed", "1"], "--seed: only with --preset"),
    (["--to-hf", "x", "--full", "--format", "hf"], "--full, --format: only with --preset"),
    (["--preset", "gpt2", "--seed", "-1"], "--seed must be a non-negative integer"),
])
def test_options_that_do_not_fit_together(argv, message, tmp_path, capsys):
    assert main(["convert", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path, capsys):
    hf = tmp_path / "hf"  # the output beside the source: never inside it (issue 10, item 4)
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "rwkv"}))
    assert main(["convert", "--from-hf", str(hf), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmref convert: error:") and "'rwkv' is not supported" in err


def test_a_config_without_a_transformers_type_is_refused_by_name(tmp_path, capsys):
    ckpt, hf = tmp_path / "ckpt", tmp_path / "hf"
    assert main(["convert", "--preset", "olmo-alibi", "--out", str(ckpt)]) == 0
    assert main(["convert", "--to-hf", str(ckpt), "--out", str(hf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmref convert: error:") and "(hf_model_type is None)" in err
    assert not hf.exists()


def test_exactly_one_source_is_required(tmp_path):
    with pytest.raises(SystemExit):
        main(["convert", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["convert", "--preset", "gpt2", "--from-hf", "x", "--out", str(tmp_path)])
