"""Bad input gets a clear error naming the problem (DESIGN.md, "Performance, reliability"):
`spec.inputs.check_tokens` and the golden's forward / decode / loss."""

from __future__ import annotations

import numpy as np
import pytest

from lmref.impl_numpy import KVCache, decode, forward, loss
from lmref.spec import InputError, ParamsError, init_params, tiny
from lmref.spec.inputs import check_tokens

CONFIG = tiny("llama3", max_seq_len=16)  # vocab 251
PARAMS = init_params(CONFIG, 0)
GOOD = np.array([[1, 2, 3, 4], [5, 6, 7, 250]])


def _call(entry: str, tokens, config=CONFIG, params=PARAMS):
    if entry == "check_tokens":
        return check_tokens(config, tokens)
    if entry == "forward":
        return forward(config, params, tokens)
    if entry == "decode":
        return decode(config, params, tokens, 1)
    return loss(config, params, tokens)


ENTRIES = ["check_tokens", "forward", "decode", "loss"]

BAD_TOKENS = [
    ("float", np.array([[1.0, 2.0]]), r"tokens must be an integer array, got dtype float64"),
    ("float32-integral", np.array([[1, 2]], dtype=np.float32), r"tokens must be an integer array, got dtype float32"),
    ("bool", np.array([[True, False]]), r"tokens must be an integer array, got dtype bool"),
    ("object", np.array([[1, None]], dtype=object), r"tokens must be an integer array, got dtype object"),
    ("strings", np.array([["a", "b"]]), r"tokens must be an integer array, got dtype <U1"),
    ("1-D", np.array([1, 2, 3]), r"tokens must have shape \[batch, seq\], got shape \(3,\)"),
    ("3-D", np.ones((1, 2, 3), dtype=np.int64), r"tokens must have shape \[batch, seq\], got shape \(1, 2, 3\)"),
    ("0-D", np.array(3), r"tokens must have shape \[batch, seq\], got shape \(\)"),
    ("empty-seq", np.zeros((2, 0), dtype=np.int64), r"tokens must be non-empty, got shape \(2, 0\)"),
    ("empty-batch", np.zeros((0, 3), dtype=np.int64), r"tokens must be non-empty, got shape \(0, 3\)"),
    ("negative", np.array([[1, 2], [3, -4]]), r"token id -4 at \(1, 1\) is negative"),
    ("too-big", np.array([[1, 251], [3, 4]]), r"token id 251 at \(0, 1\) is out of range for vocab_size 251"),
    ("way-too-big", np.array([[10**12]]), r"token id 1000000000000 at \(0, 0\) is out of range for vocab_size 251"),
    ("too-long", np.ones((1, 17), dtype=np.int64),
     r"sequence of 17 tokens after 0 cached positions exceeds the context max_seq_len=16"),
]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("label,tokens,pattern", BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
def test_bad_tokens_raise_input_error(entry, label, tokens, pattern):
    with pytest.raises(InputError, match=pattern):
        _call(entry, tokens)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("entry", ENTRIES)
def test_good_tokens_pass(entry):
    out = _call(entry, GOOD)
    if entry == "check_tokens":
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, GOOD)
    elif entry == "loss":
        assert np.isfinite(out)
    else:
        assert out.shape == (2, 4, 251)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8, np.uint64])
def test_any_integer_dtype_is_accepted(dtype):
    tokens = np.array([[0, 1, 127], [5, 6, 7]])  # fits every dtype here
    out = check_tokens(CONFIG, tokens.astype(dtype))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, tokens)


def test_nested_lists_are_accepted():
    np.testing.assert_array_equal(check_tokens(CONFIG, [[1, 2], [3, 4]]), [[1, 2], [3, 4]])


def test_the_full_context_is_allowed():
    tokens = np.ones((1, 16), dtype=np.int64)
    assert forward(CONFIG, PARAMS, tokens).shape == (1, 16, 251)
    assert decode(CONFIG, PARAMS, tokens, 8).shape == (1, 16, 251)


def test_check_tokens_counts_cached_positions():
    check_tokens(CONFIG, np.ones((1, 4), dtype=np.int64), past_len=12)  # exactly fills 16
    with pytest.raises(InputError, match=r"sequence of 4 tokens after 13 cached positions exceeds the context max_seq_len=16"):
        check_tokens(CONFIG, np.ones((1, 4), dtype=np.int64), past_len=13)


def test_forward_past_the_context_through_a_kv_cache():
    cache = KVCache.empty(CONFIG)
    forward(CONFIG, PARAMS, np.ones((1, 14), dtype=np.int64), cache=cache)
    forward(CONFIG, PARAMS, np.ones((1, 2), dtype=np.int64), cache=cache)  # positions 14, 15: fine
    assert cache.length == 16
    with pytest.raises(InputError, match=r"sequence of 1 tokens after 16 cached positions exceeds the context max_seq_len=16"):
        forward(CONFIG, PARAMS, np.ones((1, 1), dtype=np.int64), cache=cache)
    assert cache.length == 16  # the refused step left the cache as it was
    assert cache.keys[0].shape[1] == 16


def test_bad_token_through_a_kv_cache_leaves_the_cache_unchanged():
    cache = KVCache.empty(CONFIG)
    forward(CONFIG, PARAMS, GOOD, cache=cache)
    with pytest.raises(InputError, match="out of range for vocab_size 251"):
        forward(CONFIG, PARAMS, np.array([[1], [999]]), cache=cache)
    assert cache.length == 4 and cache.keys[1].shape[1] == 4


def test_decode_past_the_context():
    with pytest.raises(InputError, match=r"sequence of 20 tokens after 0 cached positions exceeds the context max_seq_len=16"):
        decode(CONFIG, PARAMS, np.ones((1, 20), dtype=np.int64), 10)


def test_learned_positions_past_the_context_are_refused():
    # a learned-position model has no embedding past max_seq_len: the check must catch it first
    c = tiny("gpt2", max_seq_len=8)
    p = init_params(c, 0)
    assert p["embed.positions"].shape[0] == 8
    with pytest.raises(InputError, match="max_seq_len=8"):
        forward(c, p, np.ones((1, 9), dtype=np.int64))


# --- params given to forward ------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["forward", "decode", "loss"])
def test_missing_params(entry):
    params = dict(PARAMS)
    del params["layers.1.attn.wo"]
    with pytest.raises(ParamsError, match=r"missing 1: layers\.1\.attn\.wo"):
        _call(entry, GOOD, params=params)


@pytest.mark.parametrize("entry", ["forward", "decode", "loss"])
def test_extra_params(entry):
    params = dict(PARAMS) | {"embed.positions": np.zeros((16, 128))}
    with pytest.raises(ParamsError, match=r"unexpected 1: embed\.positions"):
        _call(entry, GOOD, params=params)


@pytest.mark.parametrize("entry", ["forward", "decode", "loss"])
def test_misshaped_params(entry):
    params = dict(PARAMS) | {"layers.0.attn.wk": np.zeros((128, 128))}
    with pytest.raises(ParamsError, match=r"misshaped 1: layers\.0\.attn\.wk: expected \(128, 32\), got \(128, 128\)"):
        _call(entry, GOOD, params=params)


def test_params_of_another_config():
    # llama1 params (MHA, d 64) given with the llama3 config: every problem is named
    other = init_params(tiny("llama1"), 0)
    with pytest.raises(ParamsError) as info:
        forward(CONFIG, other, GOOD)
    message = str(info.value)
    assert "'llama3-tiny'" in message
    assert "misshaped" in message
    assert "embed.tokens: expected (251, 128), got (251, 64)" in message


def test_integer_params_are_refused_by_forward():
    params = dict(PARAMS) | {"final_norm.weight": np.ones(128, dtype=np.int64)}
    with pytest.raises(ParamsError, match="final_norm.weight: expected a floating-point array, got dtype int64"):
        forward(CONFIG, params, GOOD)



def test_cache_of_another_batch_size_is_refused():
    config = tiny("llama3")
    params = init_params(config, 0)
    cache = KVCache.empty(config)
    forward(config, params, np.zeros((2, 3), dtype=np.int64), cache=cache)
    with pytest.raises(InputError, match="tokens have batch 3 but the KV cache holds batch 2"):
        forward(config, params, np.zeros((3, 1), dtype=np.int64), cache=cache)
    assert cache.length == 3
