"""Incremental decoding through the JAX KV cache equals prefill."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import impl_jax
import impl_numpy
from impl_jax import KVCache
from spec.errors import InputError
from spec.params import init_params
from spec.presets import tiny
from tests.jax.common import assert_close, assert_float32_close, fewer_examples, note_case
from tests.strategies import configs, seeds, token_batches


@fewer_examples(2)  # two compilations per example: the prefill and the single-token step
@given(config=configs(), seed=seeds, data=st.data())
def test_decode_through_the_cache_equals_prefill(config, seed, data):
    tokens = data.draw(token_batches(config), label="tokens")
    prompt_len = data.draw(st.integers(1, tokens.shape[1]), label="prompt_len")
    note_case(seed, tokens)
    params = init_params(config, seed)
    decoded = impl_jax.decode(config, impl_jax.from_canonical(params), tokens, prompt_len)
    assert_float32_close(decoded, impl_numpy.forward(config, params, tokens), "decode vs golden prefill")


# The fixed tests share one config and token shapes, so they share compilations too.
CONFIG = tiny("llama3")
PARAMS = init_params(CONFIG, 0)  # float64 NumPy: cast to float32 JAX arrays at the jit boundary
TOKENS = np.random.default_rng(0).integers(0, CONFIG.vocab_size, (2, 11))


def test_decode_equals_jax_prefill_closely():
    prefill = impl_jax.forward(CONFIG, PARAMS, TOKENS)
    assert_close(impl_jax.decode(CONFIG, PARAMS, TOKENS, 5), prefill, nmse_max=1e-12, atol=1e-5, rtol=1e-5,
                 what="decode vs prefill, both JAX float32")


def test_cache_is_a_fixed_buffer_with_a_length():
    cache = KVCache.empty(CONFIG, batch=2)
    shape = (2, CONFIG.max_seq_len, CONFIG.n_kv_heads, CONFIG.head_dim)
    assert len(cache.keys) == len(cache.values) == CONFIG.n_layers
    assert all(k.shape == shape for k in cache.keys + cache.values)
    _, cache = impl_jax.forward(CONFIG, PARAMS, TOKENS[:, :5], cache)
    _, cache = impl_jax.forward(CONFIG, PARAMS, TOKENS[:, 5:6], cache)
    assert int(cache.length) == 6
    assert all(k.shape == shape for k in cache.keys + cache.values)
    written = jnp.any(cache.keys[0] != 0, axis=(2, 3))  # [B, max_seq_len]
    assert jnp.all(written[:, :6]) and not jnp.any(written[:, 6:])


def test_cache_refuses_a_step_past_the_context_or_another_batch():
    cache = KVCache.empty(CONFIG, batch=2)._replace(length=jnp.asarray(CONFIG.max_seq_len - 2, jnp.int32))
    with pytest.raises(InputError, match="after 1022 cached positions exceeds the context max_seq_len=1024"):
        impl_jax.forward(CONFIG, PARAMS, TOKENS[:, :3], cache)
    with pytest.raises(InputError, match="tokens have batch 3 but the KV cache holds batch 2"):
        impl_jax.forward(CONFIG, PARAMS, np.zeros((3, 1), np.int64), cache)


def test_decode_steps_share_one_compilation(caplog):
    config = dataclasses.replace(CONFIG, name="decode-compilation-count")  # a fresh jit key
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
        impl_jax.decode(config, PARAMS, TOKENS, 3)  # a prefill and 8 single-token steps
    compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(forward_core)")]
    assert len(compiles) == 2, [r.getMessage() for r in compiles]  # the prefill and the step
