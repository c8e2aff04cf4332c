"""The twin's logits against the golden: hypothesis over the config space, every tiny preset
on a fixed batch, the canonical round trip and the captured intermediates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given

from lmref import impl_numpy
from lmref import impl_torch
from lmref.impl_torch.attention import ATTN_IMPLS
from lmref.impl_torch.model import torch_name
from lmref.spec import PRESETS, init_params, param_shapes, tiny
from lmref.spec.captures import capture_names
from tests.strategies import configs, seeds
from tests.torch.helpers import FLOAT32, FLOAT64, assert_close, build, examples, float32_row, numpy64, params_of


@given(examples())
def test_logits_match_the_golden(example):
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    ref = impl_numpy.forward(config, params, tokens)
    row = float32_row(config, params, tokens, ref)
    for attn_impl in ATTN_IMPLS:
        out = build(config, params, torch.float32, attn_impl)(tokens)
        assert out.dtype == torch.float32
        assert_close(numpy64(out), ref, row, f"float32 {attn_impl} logits")
        out64 = build(config, params, torch.float64, attn_impl)(tokens)
        assert_close(numpy64(out64), ref, FLOAT64, f"float64 {attn_impl} logits")


@given(examples(min_seq=2))
def test_loss_matches_the_golden(example):
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    ref = impl_numpy.loss(config, params, tokens)
    got = build(config, params).loss(tokens)
    assert got.shape == () and got.dtype == torch.float32
    assert abs(float(got.detach()) - ref) <= FLOAT32.loss_atol + FLOAT32.loss_rtol * abs(ref)
    assert float(impl_torch.loss(config, params, tokens, dtype=torch.float64)) == pytest.approx(ref, rel=1e-12)


@given(examples())
def test_captured_intermediates_match_the_golden(example):
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    ref: dict = {}
    impl_numpy.forward(config, params, tokens, capture=ref)
    got: dict = {}
    impl_torch.forward(config, params, tokens, capture=got, dtype=torch.float64)
    assert list(got) == list(ref) == capture_names(config)
    for name in ref:
        assert_close(numpy64(got[name]), ref[name], FLOAT64, name)


@given(configs(), seeds)
def test_canonical_round_trip_is_exact(config, seed):
    params = init_params(config, seed)
    for dtype, np_dtype in [(torch.float64, np.float64), (torch.float32, np.float32), (torch.float16, np.float16),
                            (torch.bfloat16, np.float32)]:
        model = build(config, params, dtype)
        back = model.to_canonical()
        assert list(back) == list(param_shapes(config))
        for name, value in back.items():
            assert value.dtype == np_dtype and value.shape == params[name].shape, name
        again = build(config, back, dtype).to_canonical()
        for name, value in back.items():
            np.testing.assert_array_equal(again[name], value, err_msg=name)
    for name, value in build(config, params, torch.float64).to_canonical().items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)


@given(configs())
def test_every_module_parameter_is_a_canonical_one(config):
    model = impl_torch.Transformer(config)
    mapped = {torch_name(name)[0] for name in param_shapes(config)}
    assert set(dict(model.named_parameters())) == mapped  # named_parameters lists a tied weight once
    assert (model.lm_head.weight is model.embed.tokens.weight) == config.tie_embeddings


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_tiny_preset_matches_the_golden(arch):
    config = tiny(arch)
    params = init_params(config, 0)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 7))
    ref = impl_numpy.forward(config, params, tokens)
    for attn_impl in ATTN_IMPLS:
        model = build(config, params, torch.float32, attn_impl)
        assert_close(numpy64(model(tokens)), ref, FLOAT32, f"{arch} {attn_impl} logits")
        assert_close(numpy64(model.decode(tokens, 3)), ref, FLOAT32, f"{arch} {attn_impl} decode")
