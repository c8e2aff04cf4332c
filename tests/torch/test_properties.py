"""Structural properties: causality, batch independence, GQA as repeated KV heads, and the
SDPA kernel against the eager one."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lmref.impl_torch.attention import ATTN_IMPLS
from lmref.spec.config import ModelConfig
from tests.torch.helpers import FLOAT32, FLOAT64, assert_close, build, examples, numpy64, params_of


@given(examples(min_seq=2), st.data())
def test_a_future_token_changes_no_earlier_logit(example, data):
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    t = data.draw(st.integers(1, tokens.shape[1] - 1), label="changed position")
    changed = tokens.copy()
    changed[:, t] = (tokens[:, t] + data.draw(st.integers(1, config.vocab_size - 1), label="shift")) % config.vocab_size
    for attn_impl in ATTN_IMPLS:
        model = build(config, params, torch.float32, attn_impl)
        before, after = model(tokens), model(changed)
        torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)  # bit for bit
        assert not torch.equal(after[:, t], before[:, t])  # the change itself is seen


@given(examples())
def test_each_sequence_of_a_batch_is_computed_alone(example):
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    for attn_impl in ATTN_IMPLS:
        model = build(config, params, torch.float32, attn_impl)
        together = numpy64(model(tokens))
        for b in range(tokens.shape[0]):
            alone = numpy64(model(tokens[b : b + 1]))
            assert_close(together[b : b + 1], alone, FLOAT32, f"{attn_impl} sequence {b}")
        assert_close(numpy64(model(tokens[::-1])), together[::-1], FLOAT32, f"{attn_impl} reversed batch")


def as_multi_head(config: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """The same model with one KV head per query head: KV head j's weights repeated for its
    group of query heads j * G .. j * G + G - 1."""
    mha = dataclasses.replace(config, n_kv_heads=config.n_heads)
    repeat = {}
    for name, value in params.items():
        per_projection_norm = config.qk_norm == "per_projection" and name.endswith("k_norm.weight")
        if name.rsplit(".", 1)[-1] in ("wk", "wv", "bk", "bv") or per_projection_norm:  # OLMo 2's k norm: [KV*hd]
            heads = value.reshape(*value.shape[:-1], config.n_kv_heads, config.head_dim)  # [..., KV, hd]
            repeated = np.repeat(heads, config.kv_group_size, axis=-2)  # [..., H, hd]
            repeat[name] = repeated.reshape(*value.shape[:-1], config.q_dim)  # [..., H * hd]
    return mha, params | repeat


@given(examples())
def test_grouped_query_attention_equals_repeated_kv_heads(example):
    config, seed, tokens = example
    assume(config.n_kv_heads < config.n_heads)
    params = params_of(config, seed, tokens)
    mha_config, mha_params = as_multi_head(config, params)
    for attn_impl in ATTN_IMPLS:
        gqa = numpy64(build(config, params, torch.float64, attn_impl)(tokens))
        mha = numpy64(build(mha_config, mha_params, torch.float64, attn_impl)(tokens))
        assert_close(gqa, mha, FLOAT64, f"{attn_impl} GQA vs MHA")


def prompt_then_rest(model, tokens: np.ndarray, prompt_len: int) -> np.ndarray:
    """Logits of the prompt, then of the rest in one step through the cache (queries offset
    by the cache length, more than one of them)."""
    cache = model.new_cache(tokens.shape[0])
    steps = [model(part, cache=cache) for part in np.split(tokens, [prompt_len], axis=1) if part.shape[1]]
    return numpy64(torch.cat(steps, dim=1))


@given(examples(), st.data())
def test_sdpa_equals_eager(example, data):
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    prompt_len = data.draw(st.integers(1, tokens.shape[1]), label="prompt_len")
    for dtype, row in [(torch.float64, FLOAT64), (torch.float32, FLOAT32)]:
        sdpa, eager = (build(config, params, dtype, impl) for impl in ("sdpa", "eager"))
        assert_close(numpy64(sdpa(tokens)), numpy64(eager(tokens)), row, f"{dtype} prefill")
        assert_close(prompt_then_rest(sdpa, tokens, prompt_len), prompt_then_rest(eager, tokens, prompt_len), row,
                     f"{dtype} cached")
