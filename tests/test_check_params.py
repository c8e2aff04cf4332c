"""`check_params` (spec/params.py): every problem of a params dict named at once, by tensor
name and shape, as a ParamsError."""

from __future__ import annotations

import numpy as np
import pytest

from lmref.spec import ParamsError, init_params, tiny
from lmref.spec.params import check_params, layout_mismatches


@pytest.fixture
def llama():
    c = tiny("llama3")
    return c, init_params(c, 0)


def _params_error(config, params) -> str:
    with pytest.raises(ParamsError) as info:
        check_params(config, params)
    return str(info.value)


def test_params_error_is_a_value_error():
    assert issubclass(ParamsError, ValueError)


def test_missing_params_are_listed(llama):
    c, p = llama
    del p["layers.0.attn.wq"], p["final_norm.weight"]
    message = _params_error(c, p)
    assert "'llama3-tiny'" in message
    assert "missing 2: layers.0.attn.wq, final_norm.weight" in message
    assert "unexpected" not in message and "misshaped" not in message


def test_unexpected_params_are_listed(llama):
    c, p = llama
    p["layers.9.attn.wq"] = np.zeros((128, 128))
    p["lm_head.bias"] = np.zeros(251)
    message = _params_error(c, p)
    assert "unexpected 2: layers.9.attn.wq, lm_head.bias" in message
    assert "missing" not in message and "misshaped" not in message


def test_misshaped_params_name_both_shapes(llama):
    c, p = llama
    p["layers.1.mlp.w_up"] = p["layers.1.mlp.w_up"].T
    message = _params_error(c, p)
    assert "misshaped 1: layers.1.mlp.w_up: expected (128, 448), got (448, 128)" in message


def test_all_problems_are_reported_at_once(llama):
    c, p = llama
    del p["embed.tokens"]
    p["extra.thing"] = np.zeros(3)
    p["layers.0.attn.wk"] = np.zeros((128, 128))
    message = _params_error(c, p)
    assert "missing 1: embed.tokens" in message
    assert "unexpected 1: extra.thing" in message
    assert "misshaped 1: layers.0.attn.wk: expected (128, 32), got (128, 128)" in message


@pytest.mark.parametrize("dtype", [np.int64, np.int32, bool, object])
def test_non_float_params_are_rejected(llama, dtype):
    c, p = llama
    p["layers.0.attn.wv"] = np.zeros((128, 32), dtype=dtype)
    message = _params_error(c, p)
    assert message.startswith("layers.0.attn.wv: expected a floating-point array, got dtype")
    assert str(np.dtype(dtype)) in message


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_params_of_any_width_are_accepted(llama, dtype):
    c, p = llama
    p = {k: v.astype(dtype) for k, v in p.items()}
    check_params(c, p)  # no exception


@pytest.mark.parametrize("bad", [None, [("embed.tokens", np.zeros(1))], "params"])
def test_params_must_be_a_dict(bad):
    with pytest.raises(ParamsError, match="params must be a dict of arrays"):
        check_params(tiny("llama3"), bad)


def test_a_layout_mismatch_lists_at_most_twenty_names_of_each_kind():
    expected = {f"w{i}": (1,) for i in range(25)}
    names = ", ".join(f"w{i}" for i in range(20))
    assert layout_mismatches(expected, {}) == [f"missing 25: {names} and 5 more"]
