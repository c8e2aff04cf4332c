"""Bad input: the JAX twin raises the golden's error, with the golden's message, before any
JAX code runs (so nothing is compiled for it).  A config that needs a feature the twin does
not compute is refused by name (UnsupportedFeature: NOT SUPPORTED in the suite)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from lmref import impl_jax
from lmref import impl_numpy
from lmref.impl_jax.adapter import JaxAdapter
from lmref.spec.config import RopeScaling
from lmref.spec.errors import InputError, ParamsError
from lmref.spec.features import UnsupportedFeature, missing_features
from lmref.spec.params import init_params
from lmref.spec.presets import tiny

CONFIG = tiny("gpt2", max_seq_len=16)  # vocab 251, learned positions
PARAMS = init_params(CONFIG, 0)
GOOD = np.array([[1, 2, 3], [4, 5, 250]])

BAD_TOKENS = {
    "float": np.array([[1.0, 2.0]]), "bool": np.array([[True, False]]),
    "object": np.array([[1, None]], dtype=object), "1-D": np.array([1, 2]), "3-D": np.ones((1, 2, 2), np.int64),
    "0-D": np.array(3), "empty": np.zeros((2, 0), np.int64), "negative": np.array([[1, -4]]),
    "too-big": np.array([[1, 251]]), "too-long": np.ones((1, 17), np.int64),
}


def without(name: str) -> dict:
    return {k: v for k, v in PARAMS.items() if k != name}


BAD_PARAMS = {
    "missing": without("layers.1.mlp.w_up"),
    "extra": PARAMS | {"layers.9.attn.wq": PARAMS["layers.0.attn.wq"]},
    "misshaped": PARAMS | {"layers.0.attn.wk": PARAMS["layers.0.attn.wk"][:, :-1]},
    "integer": PARAMS | {"final_norm.bias": np.zeros(64, np.int64)},
    "not-a-dict": list(PARAMS.values()),
}


def golden_and_jax(entry: str) -> tuple:
    if entry == "forward":
        return impl_numpy.forward, impl_jax.forward
    if entry == "decode":
        return (lambda c, p, t: impl_numpy.decode(c, p, t, 1)), (lambda c, p, t: impl_jax.decode(c, p, t, 1))
    return impl_numpy.loss, impl_jax.loss


def raised(call, *args) -> Exception:
    with pytest.raises(ValueError) as info:  # InputError and ParamsError are ValueErrors
        call(*args)
    return info.value


@pytest.mark.parametrize("entry", ["forward", "decode", "loss"])
@pytest.mark.parametrize("label", BAD_TOKENS)
def test_bad_tokens_raise_the_golden_error(entry, label):
    golden, twin = golden_and_jax(entry)
    expected = raised(golden, CONFIG, PARAMS, BAD_TOKENS[label])
    got = raised(twin, CONFIG, PARAMS, BAD_TOKENS[label])
    assert type(expected) is InputError
    assert (type(got), str(got)) == (type(expected), str(expected))


@pytest.mark.parametrize("entry", ["forward", "decode", "loss"])
@pytest.mark.parametrize("label", BAD_PARAMS)
def test_bad_params_raise_the_golden_error(entry, label):
    golden, twin = golden_and_jax(entry)
    expected = raised(golden, CONFIG, BAD_PARAMS[label], GOOD)
    got = raised(twin, CONFIG, BAD_PARAMS[label], GOOD)
    assert type(expected) is ParamsError
    assert (type(got), str(got)) == (type(expected), str(expected))


@pytest.mark.parametrize("label", BAD_PARAMS)
def test_the_adapter_checks_params_before_casting_them(label):
    expected = raised(impl_numpy.forward, CONFIG, BAD_PARAMS[label], GOOD)
    got = raised(JaxAdapter().forward, CONFIG, BAD_PARAMS[label], GOOD)
    assert (type(got), str(got)) == (type(expected), str(expected))


@pytest.mark.parametrize("prompt_len", [0, 4])
def test_bad_prompt_len_raises_the_golden_error(prompt_len):
    expected = raised(impl_numpy.decode, CONFIG, PARAMS, GOOD, prompt_len)
    got = raised(impl_jax.decode, CONFIG, PARAMS, GOOD, prompt_len)
    assert (type(got), str(got)) == (type(expected), str(expected))


def test_loss_of_one_token_raises_the_golden_error():
    expected = raised(impl_numpy.loss, CONFIG, PARAMS, GOOD[:, :1])
    got = raised(impl_jax.loss, CONFIG, PARAMS, GOOD[:, :1])
    assert (type(got), str(got)) == (type(expected), str(expected))


def test_bfloat16_params_pass_the_check():
    impl_jax.check_params(CONFIG, impl_jax.from_canonical(PARAMS, "bfloat16"))


def test_float64_needs_x64():
    with pytest.raises(ValueError, match="enable_x64"):
        impl_jax.from_canonical(PARAMS, "float64")


def test_a_cache_of_another_batch_raises_the_golden_error():
    golden_cache = impl_numpy.KVCache.empty(CONFIG)
    impl_numpy.forward(CONFIG, PARAMS, GOOD, cache=golden_cache)  # batch 2, 3 positions
    jax_cache = impl_jax.KVCache.empty(CONFIG, batch=2)._replace(length=jnp.asarray(3, jnp.int32))
    expected = raised(lambda: impl_numpy.forward(CONFIG, PARAMS, GOOD[:1], cache=golden_cache))
    got = raised(impl_jax.forward, CONFIG, PARAMS, GOOD[:1], jax_cache)
    assert type(expected) is InputError
    assert (type(got), str(got)) == (type(expected), str(expected))


# YaRN, which neither the golden nor the twin computes yet.
UNSUPPORTED = tiny("llama3", max_seq_len=16, rope_scaling=RopeScaling(kind="yarn", factor=2.0, original_max_seq_len=8))


def test_the_twin_declares_only_features_the_golden_computes():
    """A feature the golden lacks could not be tested against it (tests/jax compares with the golden)."""
    assert impl_jax.FEATURES <= impl_numpy.FEATURES


@pytest.mark.parametrize("entry", ["forward", "decode", "loss"])
def test_a_missing_feature_is_refused_by_name_before_the_inputs_are_read(entry):
    _, twin = golden_and_jax(entry)
    missing = missing_features(UNSUPPORTED, impl_jax.FEATURES)
    assert missing == ["rope.scaling.yarn"]
    with pytest.raises(UnsupportedFeature) as info:
        twin(UNSUPPORTED, BAD_PARAMS["missing"], BAD_TOKENS["too-big"])  # the golden's order: features first
    assert isinstance(info.value, NotImplementedError)
    assert info.value.missing == tuple(missing)
    assert "the jax backend" in str(info.value) and all(name in str(info.value) for name in missing)


def test_the_traced_core_refuses_a_missing_feature_too():
    with pytest.raises(UnsupportedFeature, match="rope.scaling.yarn"):
        impl_jax.forward_jit(UNSUPPORTED, impl_jax.from_canonical(PARAMS), GOOD)


def test_the_adapter_reports_a_missing_feature_as_not_supported():
    with pytest.raises(NotImplementedError, match="rope.scaling.yarn"):
        JaxAdapter().forward(UNSUPPORTED, init_params(UNSUPPORTED, 0), GOOD)
