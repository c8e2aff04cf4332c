"""Shared scaffolding of the per-type converter tests (tests/test_hf_gpt_neox.py, test_hf_bloom.py,
test_hf_falcon.py, test_hf_gptj.py, test_hf_phi.py, test_hf_phi3.py, test_hf_moe.py): writing a
checkpoint and editing its files, and the checks several types run alike.  Which keys, configs
and transformers source lines a check is about stay in each type's own file.

Nothing here imports torch or transformers at import time: the files that run without them
import this module too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lmref import impl_numpy
from lmref.convert import ConversionError, from_hf, to_hf
from lmref.spec import init_params

REAL_CONFIGS = Path(__file__).parent / "hf_real_configs"
WEIGHTS = "model.safetensors"


# --- writing and editing a checkpoint -----------------------------------------------------------


def hf_dir(directory: Path, config, seed: int = 1, dtype=None) -> Path:
    """`directory` holding to_hf's files of init_params(config, seed), cast to `dtype` when given."""
    params = init_params(config, seed)
    if dtype is not None:
        params = {k: v.astype(dtype) for k, v in params.items()}
    to_hf(config, params, directory)
    return directory


def edit_config(directory: Path, edit) -> None:
    """Rewrite directory/config.json after `edit(data)` changes the parsed dict in place."""
    data = json.loads((directory / "config.json").read_text())
    edit(data)
    (directory / "config.json").write_text(json.dumps(data))


def edit_weights(directory: Path, edit) -> None:
    """Rewrite directory/model.safetensors after `edit(tensors)` changes the loaded dict in place
    (with the "pt" format metadata to_hf writes and from_pretrained requires)."""
    tensors = load_file(directory / WEIGHTS)
    edit(tensors)
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})


def real_config(name: str) -> dict:
    """A published config.json kept as tests/hf_real_configs/<name>.json."""
    return json.loads((REAL_CONFIGS / f"{name}.json").read_text())


def shape_pattern(shape: tuple) -> str:
    """`shape` as a regex matching its repr: (192, 64) -> \\(192, 64\\)."""
    return str(shape).replace("(", r"\(").replace(")", r"\)")


# --- checks on tensors --------------------------------------------------------------------------


def assert_same_tensors(got: dict, want: dict, name=None, *, dtypes: bool = True) -> None:
    """`got` has exactly `want`'s keys, each tensor equal to the bit and, with `dtypes`, of the same dtype."""
    assert sorted(got) == sorted(want), name
    for key, value in want.items():
        assert (not dtypes or got[key].dtype == value.dtype) and np.array_equal(got[key], value), (name, key)


def assert_fused_per_head(config, params: dict, tensors: dict, key: str) -> None:
    """The fused `key`.weight [3 d, d] and `key`.bias [3 d] of layer 1 hold, head by head, that
    head's q rows, then its k rows, then its v rows (the nn.Linear rows of lmref's wq, wk, wv)."""
    weight, bias = tensors[f"{key}.weight"], tensors[f"{key}.bias"]  # [3 d, d], [3 d]
    hd, d = config.head_dim, config.d_model
    assert weight.shape == (3 * d, d) and bias.shape == (3 * d,)
    for h in range(config.n_heads):
        for part, name in enumerate("qkv"):
            rows = slice(h * 3 * hd + part * hd, h * 3 * hd + (part + 1) * hd)
            columns = slice(h * hd, (h + 1) * hd)
            assert np.array_equal(weight[rows], params[f"layers.1.attn.w{name}"][:, columns].T), (h, name)
            assert np.array_equal(bias[rows], params[f"layers.1.attn.b{name}"][columns]), (h, name)


def assert_misshaped_is_named(directory: Path, key: str, shape: tuple, expected: tuple, dtype=np.float32) -> None:
    """With tensor `key` replaced by zeros of `shape`, from_hf refuses the checkpoint naming the key,
    the `expected` shape and the one it got."""
    edit_weights(directory, lambda t: t.update({key: np.zeros(shape, dtype)}))
    with pytest.raises(ConversionError, match=rf"misshaped 1 key\(s\): {key}: expected {shape_pattern(expected)}, "
                                              rf"got {shape_pattern(shape)}"):
        from_hf(directory)


def assert_split_and_rejoin_exact(directory: Path, config, dtype: str, read_key: str | None = None):
    """HF -> lmref -> HF gives the same bits on tensors lmref did not write: `config`'s checkpoint
    with every tensor replaced by standard normals (rng 0) in `dtype` is read (lmref's `read_key`,
    when given, keeps `dtype`) and written to directory/back, key for key, dtype for dtype.
    Returns the config read."""
    hf_dir(directory, config)
    rng = np.random.default_rng(0)
    edit_weights(directory, lambda t: t.update({k: rng.standard_normal(v.shape).astype(dtype) for k, v in t.items()}))
    original = load_file(directory / WEIGHTS)
    read, params = from_hf(directory)
    if read_key is not None:
        assert params[read_key].dtype == dtype
    to_hf(read, params, directory / "back")
    assert_same_tensors(load_file(directory / "back" / WEIGHTS), original)
    return read


# --- transformers' own models -------------------------------------------------------------------


def save_randomised(model_class, config, directory: Path):
    """model_class(config) built after torch.manual_seed(0), at the golden's weight scale
    (tests/test_hf_transformers.py's _randomise, seed 1), in eval mode and saved by
    save_pretrained into `directory`; returns the model."""
    import torch

    from tests.test_hf_transformers import _randomise

    torch.manual_seed(0)
    model = model_class(config)
    _randomise(model, seed=1)
    model.eval().save_pretrained(directory)
    return model


def assert_golden_matches_transformers(model, directory: Path, name=None, seq: int = 40):
    """The float64 golden of from_hf(directory) passes the conformance float32 row against
    `model`'s own logits on 2 rows of `seq` random tokens (rng 0), and its logits spread (std > 0.5:
    the weights are at a scale where every component matters).  Returns the config read."""
    import torch
    from lmref.conformance.metrics import compare, gate
    from lmref.conformance.tolerances import DEFAULT_ROWS

    config, params = from_hf(directory)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, seq))
    with torch.no_grad():
        hf_logits = model(input_ids=torch.from_numpy(tokens)).logits.numpy()
    golden = impl_numpy.forward(config, {k: v.astype(np.float64) for k, v in params.items()}, tokens)
    f32 = DEFAULT_ROWS["float32"]
    assert gate(compare(hf_logits, golden, f32), f32) == [], name
    assert np.std(golden) > 0.5
    return config


def written_back(directory: Path, out: Path):
    """from_hf(directory) written again by to_hf into `out`: (the config read, the original
    tensors, the exported ones)."""
    config, params = from_hf(directory)
    to_hf(config, params, out)
    return config, load_file(directory / WEIGHTS), load_file(out / WEIGHTS)


def assert_captures_are_the_goldens(config) -> None:
    """HFAdapter's captures of init_params(config, 5) in float32, on 2 rows of 9 tokens (rng 1),
    are the golden's captures in the golden's order, each within 1e-4 of its RMS (or of 1)."""
    from lmref.convert.hf_adapter import HFAdapter

    params = {k: v.astype(np.float32) for k, v in init_params(config, 5).items()}
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, size=(2, 9))
    golden: dict = {}
    impl_numpy.forward(config, {k: v.astype(np.float64) for k, v in params.items()}, tokens, capture=golden)
    captured = HFAdapter().capture(config, params, tokens)
    assert list(captured) == list(golden)
    for name, value in golden.items():
        scale = math.sqrt(float(np.mean(value**2)))
        assert float(np.max(np.abs(captured[name] - value))) < 1e-4 * max(scale, 1.0), name
