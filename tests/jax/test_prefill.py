"""Prefill properties of the JAX twin against the float64 golden (hypothesis; float32, the GQA one float64).

Every example draws a new config, so every call compiles; tests/xla_compiles.py keeps the
compiles cheap, and each property compiles as few programs per example as it can (calls of
one config and token shape share one).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

from lmref import impl_jax
from lmref import impl_numpy
from lmref.conformance.tolerances import DEFAULT_ROWS
from lmref.spec.captures import capture_names
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params
from tests.jax.common import assert_close, assert_float32_close, fewer_examples, note_case
from tests.strategies import configs, seeds, token_batches

FLOAT64 = DEFAULT_ROWS["float64"]


def jax_logits(config: ModelConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(impl_jax.forward(config, impl_jax.from_canonical(params), tokens))


@given(config=configs(), seed=seeds, data=st.data())
def test_logits_and_captures_match_the_golden(config, seed, data):
    tokens = data.draw(token_batches(config), label="tokens")
    note_case(seed, tokens)
    params = init_params(config, seed)
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, capture=golden)
    captured: dict = {}
    logits = impl_jax.forward(config, impl_jax.from_canonical(params), tokens, capture=captured)
    assert_float32_close(logits, ref, "logits")
    assert list(captured) == capture_names(config) == list(golden)
    for name, value in golden.items():
        assert_float32_close(captured[name], value, f"capture {name}")


@fewer_examples(2)  # a structural property: the mask code is the same for every config
@given(config=configs(), seed=seeds, data=st.data())
def test_logits_depend_only_on_earlier_tokens_of_the_same_row(config, seed, data):
    """Causality and batch independence, with one compilation: logits[b, :cut] must not move
    when tokens from `cut` on change, nor when every other row changes."""
    tokens = data.draw(token_batches(config).filter(lambda t: t.shape[1] >= 2), label="tokens")
    cut = data.draw(st.integers(1, tokens.shape[1] - 1), label="cut")
    row = data.draw(st.integers(0, tokens.shape[0] - 1), label="row")
    note_case(seed, tokens)
    params = init_params(config, seed)
    later_changed, other_rows_changed = tokens.copy(), tokens.copy()
    later_changed[:, cut:] = (tokens[:, cut:] + 1) % config.vocab_size
    others = np.arange(tokens.shape[0]) != row
    other_rows_changed[others] = (tokens[others] + 1) % config.vocab_size
    logits = jax_logits(config, params, tokens)
    np.testing.assert_allclose(jax_logits(config, params, later_changed)[:, :cut], logits[:, :cut], rtol=1e-6,
                               atol=1e-6, err_msg=f"positions < {cut} moved when the tokens from {cut} on changed")
    np.testing.assert_allclose(jax_logits(config, params, other_rows_changed)[row], logits[row], rtol=1e-6,
                               atol=1e-6, err_msg=f"row {row} moved when the other rows changed")


def as_multi_head(config: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """The same model with n_kv_heads == n_heads: each KV head's weights repeated for every
    query head of its group (kv head j serves query heads j*G .. j*G+G-1, HF `repeat_kv`)."""
    mha = dataclasses.replace(config, n_kv_heads=config.n_heads)
    g, hd = config.kv_group_size, config.head_dim
    repeated = dict(params)
    for name, value in params.items():
        per_projection_norm = config.qk_norm == "per_projection" and name.endswith("attn.k_norm.weight")
        if name.endswith(("attn.wk", "attn.wv", "attn.bk", "attn.bv")) or per_projection_norm:  # k norm [KV*hd]
            heads = value.reshape(*value.shape[:-1], config.n_kv_heads, hd)  # [..., KV, hd]
            repeated[name] = np.repeat(heads, g, axis=-2).reshape(*value.shape[:-1], -1)  # [..., H*hd]
    return mha, repeated


def jax_logits_float64(config: ModelConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(impl_jax.forward(config, impl_jax.from_canonical(params, "float64"), tokens))


@fewer_examples(2)  # two compilations per example
@given(config=configs().filter(lambda c: c.n_kv_heads < c.n_heads), seed=seeds, data=st.data())
def test_grouped_query_attention_equals_repeated_kv_heads(config, seed, data):
    """In float64, where the two differ only in summation order (as tests/torch/test_properties.py
    checks it): in float32 a drawn config can amplify that order's rounding past any fixed gate
    (tests/conditioning.py)."""
    tokens = data.draw(token_batches(config), label="tokens")
    note_case(seed, tokens)
    params = init_params(config, seed)
    mha, mha_params = as_multi_head(config, params)
    note(f"multi-head twin: {mha!r}")
    grouped = jax_logits_float64(config, params, tokens)
    assert_close(jax_logits_float64(mha, mha_params, tokens), grouped, nmse_max=FLOAT64.nmse, atol=FLOAT64.atol,
                 rtol=FLOAT64.rtol, what="n_kv_heads == n_heads with repeated KV weights vs GQA, float64")
