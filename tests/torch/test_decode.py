"""Incremental decoding through the static KV cache equals one prefill of the whole batch."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, note
from hypothesis import strategies as st

from lmref import impl_numpy
from lmref.impl_torch.attention import ATTN_IMPLS
from lmref.spec.plan import EMPTY_SLOT
from tests.decode_reference import chunkwise, stepwise
from tests.torch.helpers import FLOAT64, assert_close, build, examples, float32_row, numpy64, params_of


@given(examples(), st.data())
def test_decode_step_by_step_equals_prefill(example, data):
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    prompt_len = data.draw(st.integers(1, tokens.shape[1]), label="prompt_len")
    ref = impl_numpy.decode(config, params, tokens, prompt_len)  # the prefill's but for LongRoPE
    row = float32_row(config, params, tokens, impl_numpy.forward(config, params, tokens))
    for attn_impl in ATTN_IMPLS:
        model = build(config, params, torch.float32, attn_impl)
        decoded = numpy64(model.decode(tokens, prompt_len))
        prefills = stepwise(lambda t: numpy64(model(t)), tokens, prompt_len)  # of each prefix
        assert_close(decoded, prefills, row, f"float32 {attn_impl} decode vs prefill")
        assert_close(decoded, ref, row, f"float32 {attn_impl} decode vs golden")


@given(examples(), st.data())
def test_chunked_prefill_into_a_roomy_cache_equals_prefill(example, data):
    """Chunks of any sizes through a cache with spare capacity (unwritten slots, at EMPTY_SLOT)
    give the golden's logits to the float64 row; the cache's length counts the tokens and
    its slots record their positions."""
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    seq = tokens.shape[1]
    cuts = sorted(data.draw(st.sets(st.integers(1, seq - 1), max_size=3), label="cuts")) if seq > 1 else []
    note(f"chunks: {np.split(np.arange(seq), cuts)}")
    ref = chunkwise(lambda t: impl_numpy.forward(config, params, t), tokens, cuts)  # the prefill's but for LongRoPE
    for attn_impl in ATTN_IMPLS:
        model = build(config, params, torch.float64, attn_impl)
        cache = model.new_cache(tokens.shape[0])
        assert cache.capacity == config.max_seq_len
        chunks = [model(chunk, cache=cache) for chunk in np.split(tokens, cuts, axis=1)]
        assert cache.length == seq
        assert cache.positions.tolist() == list(range(seq)) + [EMPTY_SLOT] * (cache.capacity - seq)
        assert_close(numpy64(torch.cat(chunks, dim=1)), ref, FLOAT64, f"float64 {attn_impl} chunked")
