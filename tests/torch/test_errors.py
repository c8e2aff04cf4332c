"""Bad input: the twin refuses what the golden refuses, with the very same message."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lmref import impl_numpy
from lmref import impl_torch
from lmref.impl_torch import KVCache, Transformer
from lmref.spec import InputError, ParamsError, RopeScaling, init_params, tiny
from lmref.spec.features import UnsupportedFeature

CONFIG = dataclasses.replace(tiny("llama3"), max_seq_len=8)
PARAMS = init_params(CONFIG, 0)

BAD_TOKENS = {
    "negative": np.array([[1, -3, 2]]),
    "out of range": np.array([[1, 2], [3, CONFIG.vocab_size]]),
    "float": np.array([[1.0, 2.0]]),
    "bool": np.array([[True, False]]),
    "1-d": np.array([1, 2, 3]),
    "3-d": np.zeros((1, 2, 3), dtype=np.int64),
    "empty": np.zeros((2, 0), dtype=np.int64),
    "past the context": np.zeros((1, 9), dtype=np.int64),
}


def golden_message(call, *args) -> str:
    with pytest.raises((InputError, ParamsError, ValueError)) as golden:
        call(*args)
    return str(golden.value)


@pytest.mark.parametrize("what", list(BAD_TOKENS))
def test_bad_tokens_get_the_golden_error(what):
    tokens = BAD_TOKENS[what]
    expected = golden_message(impl_numpy.forward, CONFIG, PARAMS, tokens)
    model = Transformer.from_canonical(CONFIG, PARAMS)
    for form in (tokens, torch.from_numpy(tokens)):  # the NumPy path and the native tensor path
        with pytest.raises(InputError) as err:
            model(form)
        assert str(err.value) == expected
    with pytest.raises(InputError) as err:
        impl_torch.forward(CONFIG, PARAMS, tokens)
    assert str(err.value) == expected


def test_float16_tensor_tokens_are_refused():
    with pytest.raises(InputError, match="^tokens must be an integer array, got dtype float16$"):
        Transformer(CONFIG)(torch.zeros((1, 2), dtype=torch.float16))


def test_tokens_past_the_context_through_the_cache_get_the_golden_error():
    prompt, step = np.zeros((1, 6), dtype=np.int64), np.zeros((1, 3), dtype=np.int64)
    cache = impl_numpy.KVCache.empty(CONFIG)
    impl_numpy.forward(CONFIG, PARAMS, prompt, cache=cache)
    with pytest.raises(InputError) as golden:
        impl_numpy.forward(CONFIG, PARAMS, step, cache=cache)
    model = Transformer.from_canonical(CONFIG, PARAMS)
    cache = model.new_cache(1)
    model(prompt, cache=cache)
    with pytest.raises(InputError) as err:
        model(step, cache=cache)
    assert str(err.value) == str(golden.value)
    assert cache.length == 6  # a refused step leaves the cache as it was


def test_a_cache_refuses_another_batch_and_overflow():
    model = Transformer.from_canonical(CONFIG, PARAMS)
    cache = model.new_cache(2, capacity=4)
    with pytest.raises(InputError, match="batch 1 but the KV cache was allocated for batch 2"):
        model(np.zeros((1, 2), dtype=np.int64), cache=cache)
    model(np.zeros((2, 3), dtype=np.int64), cache=cache)
    with pytest.raises(InputError, match="2 tokens after 3 cached positions exceeds the KV cache capacity 4"):
        model(np.zeros((2, 2), dtype=np.int64), cache=cache)
    with pytest.raises(ValueError, match=r"capacity must be in \[1, max_seq_len=8\], got 9"):
        KVCache.empty(CONFIG, 1, capacity=9)
    k = torch.zeros(2, CONFIG.n_kv_heads, 1, CONFIG.head_dim)
    with pytest.raises(ValueError, match=r"one position per slot for the whole batch: positions must be \[1, S\]"):
        cache.append(0, k, k, torch.tensor([[3], [4]]))


def test_bad_params_get_the_golden_error():
    good = dict(PARAMS)
    bad = {
        "missing": {k: v for k, v in good.items() if k != "layers.1.attn.wk"},
        "extra": good | {"layers.9.attn.wq": good["layers.0.attn.wq"]},
        "misshaped": good | {"layers.0.mlp.w_up": good["layers.0.mlp.w_up"].T},
        "integer": good | {"final_norm.weight": np.ones(CONFIG.d_model, dtype=np.int64)},
    }
    tokens = np.zeros((1, 2), dtype=np.int64)
    for what, params in bad.items():
        expected = golden_message(impl_numpy.forward, CONFIG, params, tokens)
        with pytest.raises(ParamsError) as err:
            Transformer.from_canonical(CONFIG, params)
        assert str(err.value) == expected, what


def test_loss_and_decode_arguments_get_the_golden_error():
    model = Transformer.from_canonical(CONFIG, PARAMS)
    one = np.zeros((1, 1), dtype=np.int64)
    with pytest.raises(ValueError) as err:
        model.loss(one)
    assert str(err.value) == golden_message(impl_numpy.loss, CONFIG, PARAMS, one)
    three = np.zeros((1, 3), dtype=np.int64)
    for prompt_len in (0, 4):
        with pytest.raises(ValueError) as err:
            model.decode(three, prompt_len)
        assert str(err.value) == golden_message(impl_numpy.decode, CONFIG, PARAMS, three, prompt_len)


def test_unknown_dtype_and_kernel_are_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        Transformer(CONFIG, dtype=torch.int32)
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        Transformer(CONFIG, attn_impl="flash")


@pytest.mark.parametrize("changes, feature", [
    (dict(rope_scaling=RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=16)), "rope.scaling.yarn"),
    (dict(rope_scaling=RopeScaling(kind="dynamic", factor=2.0)), "rope.scaling.dynamic"),
])
def test_a_feature_the_twin_lacks_is_refused_by_name(changes, feature):
    """The twin refuses what its FEATURES lack, before tokens and params, as the golden does."""
    config = tiny("llama3", **changes)
    params = init_params(config, 0)
    with pytest.raises(UnsupportedFeature) as golden:
        impl_numpy.forward(config, params, np.zeros((1, 2), dtype=np.int64))
    for call in (lambda: Transformer(config), lambda: Transformer.from_canonical(config, params),
                 lambda: impl_torch.forward(config, params, np.zeros((1, 2), dtype=np.int64)),
                 lambda: impl_torch.forward(config, {}, np.array([[-1]])),
                 lambda: impl_torch.decode(config, params, np.zeros((1, 2), dtype=np.int64), 1),
                 lambda: impl_torch.loss(config, params, np.zeros((1, 2), dtype=np.int64))):
        with pytest.raises(UnsupportedFeature, match=f"the torch backend does not implement .*{feature}") as err:
            call()
        assert err.value.missing == golden.value.missing == (feature,)
    assert feature not in impl_torch.FEATURES
    assert impl_torch.FEATURES == impl_numpy.FEATURES
