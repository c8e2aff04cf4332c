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

from lmref import impl_jax
from lmref import impl_numpy
from lmref.impl_jax import KVCache
from lmref.spec.errors import InputError
from lmref.spec.params import init_params
from lmref.spec.plan import EMPTY_SLOT
from lmref.spec.presets import tiny
from tests.conditioning import golden_in_float32
from tests.jax.common import assert_close, assert_close_as_float32_can, assert_float32_close, fewer_examples, note_case
from tests.strategies import configs, seeds, token_batches


@fewer_examples(2)  # two compilations per example: the prefill and the single-token step
@given(config=configs(), seed=seeds, data=st.data())
def test_decode_through_the_cache_equals_prefill(config, seed, data):
    tokens = data.draw(token_batches(config), label="tokens")
    prompt_len = data.draw(st.integers(1, tokens.shape[1]), label="prompt_len")
    note_case(seed, tokens)
    params = init_params(config, seed)
    decoded = impl_jax.decode(config, impl_jax.from_canonical(params), tokens, prompt_len)
    # the golden's decode: its prefill of each prefix (the whole sequence's but for LongRoPE)
    assert_float32_close(decoded, impl_numpy.decode(config, params, tokens, prompt_len), "decode vs golden")



LONGROPE = tiny("phi-3-mini-128k", max_seq_len=48)  # LongRoPE, original context O = 32
ORIGINAL = LONGROPE.rope_scaling.original_max_seq_len


@fewer_examples(5)  # each example compiles a prefill, a step, the re-run and the whole prefill
@given(seed=seeds, prompt_len=st.integers(ORIGINAL - 3, ORIGINAL), extra=st.integers(1, 4))
def test_decode_past_the_original_context_equals_the_prefill_of_the_whole_sequence(seed, prompt_len, extra):
    """A LongRoPE decode that crosses the original context O re-runs the sequence with the long
    factors (spec/MATH.md, "LongRoPE"), so its last step is the prefill of the whole sequence,
    longer than O.  A decode that kept the short-factor keys of its cache would differ."""
    assert LONGROPE.rope_scaling.kind == "longrope"
    params = init_params(LONGROPE, seed)
    tokens = np.random.default_rng(seed).integers(0, LONGROPE.vocab_size, (2, ORIGINAL + extra))
    note_case(seed, tokens)
    decoded = impl_jax.decode(LONGROPE, params, tokens, prompt_len)
    prefill = impl_jax.forward(LONGROPE, params, tokens)
    golden = impl_numpy.forward(LONGROPE, params, tokens)
    # float32 itself can miss 1e-12 here: at seed 57437 the golden's float32 run is 2.2e-12 off
    assert_close_as_float32_can(decoded[:, -1], prefill[:, -1], golden=golden[:, -1],
                                golden32=golden_in_float32(LONGROPE, params, tokens)[:, -1], nmse_max=1e-12,
                                atol=1e-5, rtol=1e-5,
                                what="last decode step vs prefill of the whole sequence, both JAX float32")
    assert_float32_close(decoded[:, -1], golden[:, -1], "last decode step vs golden prefill")


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
    assert len(cache.keys) == len(cache.values) == len(cache.positions) == CONFIG.n_layers
    assert all(k.shape == shape for k in cache.keys + cache.values)
    assert all(p.dtype == jnp.int32 and np.all(np.asarray(p) == EMPTY_SLOT) for p in cache.positions)
    _, cache = impl_jax.forward(CONFIG, PARAMS, TOKENS[:, :5], cache)
    _, cache = impl_jax.forward(CONFIG, PARAMS, TOKENS[:, 5:6], cache)
    assert int(cache.length) == 6
    assert all(k.shape == shape for k in cache.keys + cache.values)
    written = jnp.any(cache.keys[0] != 0, axis=(2, 3))  # [B, max_seq_len]
    assert jnp.all(written[:, :6]) and not jnp.any(written[:, 6:])
    expected = np.concatenate([np.arange(6), np.full(CONFIG.max_seq_len - 6, EMPTY_SLOT)])  # [max_seq_len]
    for p in cache.positions:
        assert p.shape == (CONFIG.max_seq_len,)
        np.testing.assert_array_equal(np.asarray(p), expected)


def reversed_slots(cache: KVCache, n: int) -> KVCache:
    """The cache with its first n slots in reverse order: keys, values and positions move
    together, so each slot still records the position its key was computed at."""
    order = jnp.concatenate([jnp.arange(n)[::-1], jnp.arange(n, cache.capacity)])  # [capacity]
    return cache._replace(keys=tuple(k[:, order] for k in cache.keys),
                          values=tuple(v[:, order] for v in cache.values),
                          positions=tuple(p[order] for p in cache.positions))


def test_attention_reads_key_positions_from_the_cache():
    """A slot's number means nothing: with the first slots shuffled, the next step's logits do
    not move (a sliding window and ALiBi, where reading slot t as position t would show)."""
    config = tiny("olmo-alibi", attn_pattern=("sliding", "global"), sliding_window=3, max_seq_len=16)
    params = init_params(config, 1)
    _, cache = impl_jax.forward(config, params, TOKENS[:, :5], KVCache.empty(config, batch=2))
    step, _ = impl_jax.forward(config, params, TOKENS[:, 5:6], cache)
    shuffled, _ = impl_jax.forward(config, params, TOKENS[:, 5:6], reversed_slots(cache, 5))
    assert_close(shuffled, step, nmse_max=1e-12, atol=1e-5, rtol=1e-5,
                 what="step after shuffled slots vs in order")
    assert_float32_close(step, impl_numpy.forward(config, params, TOKENS[:, :6])[:, 5:], "step vs golden prefill")


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
