"""Mixtures of experts in the torch twin (impl_torch/moe.py) against the float64 golden
(impl_numpy/moe.py): every tiny MoE preset, hypothesis over `moe_configs()` (every routing
knob), hand-made Llama 4 and Qwen2-MoE style layers, the three dispatches against each other,
the loss with its auxiliary part, gradients, and what DDP needs (every parameter in the graph).

Routing margins: a token whose k-th and (k+1)-th router logits are closer than the error of a
computation may choose other experts there, and its output moves by O(1): no tolerance covers
that, nor should one.  Checks in float32, across batch shapes or by finite differences only
take examples whose smallest gap (the golden's captured router logits) is at least MARGIN;
float64 checks need only be off an exact tie (TIE).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lmref import impl_numpy
from lmref.impl_numpy.moe import load_balancing_loss, router_z_loss
from lmref.impl_torch.adapter import TorchAdapter
from lmref.impl_torch.attention import ATTN_IMPLS
from lmref.impl_torch.model import Transformer, torch_name
from lmref.impl_torch.moe import DISPATCHES
from lmref.spec import PRESETS, init_params, param_shapes, tiny
from lmref.spec.captures import capture_names, moe_layers
from lmref.spec.config import ModelConfig, MoEConfig
from tests.strategies import moe_configs, seeds
from tests.torch.helpers import (
    FLOAT32,
    FLOAT64,
    assert_close,
    build,
    examples,
    float32_row,
    numpy64,
    params_of,
    routed_tokens,
    routing_margin,
)
from tests.torch.test_grad import DIRECTIONS, canonical_grads, directional_fd

MARGIN = 1e-3  # float32 router logits are off by ~1e-6 here
TIE = 1e-9  # float64: off by ~1e-15
MOE_PRESETS = sorted(name for name, config in PRESETS.items() if config.moe is not None)
moe_examples = examples(drawn=moe_configs)


def moe_example(example, margin: float) -> tuple[ModelConfig, dict, np.ndarray]:
    """The example's config, params and tokens, assumed at least `margin` from a routing flip."""
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    assume(routing_margin(config, params, tokens) >= margin)
    return config, params, tokens


def check_against_golden(config: ModelConfig, params: dict, tokens: np.ndarray) -> None:
    """Prefill in float64 through every dispatch (float64 row) and in float32 (its row), the
    captures (router logits included) in float64, and decode through the KV cache."""
    ref: dict = {}
    logits = impl_numpy.forward(config, params, tokens, capture=ref)
    for dispatch in DISPATCHES:
        got: dict = {}
        build(config, params, torch.float64, moe_dispatch=dispatch)(tokens, capture=got)
        assert list(got) == list(ref) == capture_names(config)
        for name, value in ref.items():
            assert_close(numpy64(got[name]), value, FLOAT64, f"float64 {dispatch} {name}")
    model, row = build(config, params, torch.float32), float32_row(config, params, tokens, logits)
    assert_close(numpy64(model(tokens)), logits, row, "float32 logits")
    assert_close(numpy64(model.decode(tokens, 1)), logits, row, "float32 decode")


# --- the tiny presets --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", MOE_PRESETS)
def test_tiny_moe_preset_matches_the_golden(arch):
    config = tiny(arch)
    params = init_params(config, 0)
    tokens = routed_tokens(config, params, (2, 7), MARGIN)
    check_against_golden(config, params, tokens)
    for dtype, row in [(torch.float64, FLOAT64), (torch.float32, FLOAT32)]:
        got = float(build(config, params, dtype).loss(tokens).detach())
        ref = impl_numpy.loss(config, params, tokens)
        assert abs(got - ref) <= row.loss_atol + row.loss_rtol * abs(ref), (dtype, got, ref)


# --- properties over the MoE config space ----------------------------------------------------


@given(moe_examples)
def test_logits_captures_and_decode_match_the_golden(example):
    check_against_golden(*moe_example(example, MARGIN))


@given(moe_examples, st.data())
def test_decode_from_any_prompt_length_equals_prefill(example, data):
    config, params, tokens = moe_example(example, MARGIN)
    prompt_len = data.draw(st.integers(1, tokens.shape[1]), label="prompt_len")
    row = float32_row(config, params, tokens, impl_numpy.forward(config, params, tokens))
    for attn_impl in ATTN_IMPLS:
        model64 = build(config, params, torch.float64, attn_impl)
        assert_close(numpy64(model64.decode(tokens, prompt_len)), numpy64(model64(tokens)), FLOAT64,
                     f"float64 {attn_impl} decode")
        model = build(config, params, torch.float32, attn_impl)
        assert_close(numpy64(model.decode(tokens, prompt_len)), numpy64(model(tokens)), row,
                     f"float32 {attn_impl} decode")


@given(moe_examples)
def test_each_sequence_of_a_batch_is_routed_alone(example):
    """Batch composition changes which tokens share an expert's matmul, never a result."""
    config, params, tokens = moe_example(example, MARGIN)
    for dispatch in DISPATCHES:
        model = build(config, params, torch.float32, moe_dispatch=dispatch)
        together = numpy64(model(tokens))
        for b in range(tokens.shape[0]):
            assert_close(together[b : b + 1], numpy64(model(tokens[b : b + 1])), FLOAT32, f"{dispatch} sequence {b}")


@given(examples(min_seq=2, drawn=moe_configs))
def test_the_three_dispatches_agree_in_values_and_gradients(example):
    config, params, tokens = moe_example(example, TIE)
    outs, grads = {}, {}
    for dispatch in DISPATCHES:
        model = build(config, params, torch.float64, moe_dispatch=dispatch)
        outs[dispatch] = numpy64(model(tokens))
        model.loss(tokens).backward()
        grads[dispatch] = canonical_grads(model, params)
    for dispatch in DISPATCHES[1:]:
        assert_close(outs[dispatch], outs["sorted"], FLOAT64, f"{dispatch} vs sorted logits")
        for name in params:
            np.testing.assert_allclose(grads[dispatch][name], grads["sorted"][name], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{dispatch} vs sorted: d loss / d {name}")


@given(examples(min_seq=2, drawn=moe_configs))
def test_loss_with_the_auxiliary_loss_matches_the_golden(example):
    config, params, tokens = moe_example(example, MARGIN)
    ref = impl_numpy.loss(config, params, tokens)
    parts = build(config, params, torch.float64).loss_parts(tokens)
    assert float(parts["loss"].detach()) == pytest.approx(ref, rel=1e-12)
    routers: dict = {}
    impl_numpy.forward(config, params, tokens, capture=routers)
    logits = [routers[f"layers.{i}.router"] for i in moe_layers(config)]
    assert float(parts["aux"].detach()) == pytest.approx(load_balancing_loss(config, logits), rel=1e-12)
    if config.moe.router_z_loss_coef > 0:
        assert float(parts["z_loss"].detach()) == pytest.approx(router_z_loss(config, logits), rel=1e-12)
    else:
        assert "z_loss" not in parts
    load = parts["expert_load"]
    assert load.shape == (len(moe_layers(config)), config.moe.n_experts)
    np.testing.assert_allclose(load.sum(dim=1).numpy(), 1.0, rtol=1e-6)
    got = float(build(config, params).loss(tokens).detach())
    assert abs(got - ref) <= FLOAT32.loss_atol + FLOAT32.loss_rtol * abs(ref)


@given(examples(min_seq=2, drawn=moe_configs))
def test_loss_gradient_matches_golden_finite_differences(example):
    """Autograd (float64) along random unit directions against central differences of the
    golden's loss, which routing makes piecewise smooth: the margin keeps eps = 1e-6 steps
    (router logits move by ~1e-6) on one piece."""
    config, params, tokens = moe_example(example, MARGIN)
    model = build(config, params, torch.float64)
    model.loss(tokens).backward()
    grads = canonical_grads(model, params)
    rng = np.random.default_rng(0)
    for _ in range(DIRECTIONS):
        u = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        norm = np.sqrt(sum((d**2).sum() for d in u.values()))
        u = {k: d / norm for k, d in u.items()}
        autograd = sum(float((grads[k] * u[k]).sum()) for k in params)
        fd = directional_fd(config, params, tokens, u)
        assert abs(autograd - fd) <= 1e-8 + 1e-5 * abs(fd), f"autograd {autograd!r} vs finite differences {fd!r}"


@given(moe_configs(), seeds)
def test_canonical_params_round_trip_through_the_module(config, seed):
    params = init_params(config, seed)
    model = build(config, params, torch.float64)
    mapped = {torch_name(name)[0] for name in param_shapes(config)}
    assert set(dict(model.named_parameters())) == mapped
    back = model.to_canonical()
    assert list(back) == list(param_shapes(config))
    for name, value in back.items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)
    assert set(dict(Transformer(config).named_parameters())) == mapped  # torch's default init too


# --- Llama 4's and Qwen2-MoE's knobs on fixed configs -----------------------------------------

LLAMA = tiny("llama3")
# Llama 4's layer: top-k of the raw logits, sigmoid weights on the expert input, a shared expert.
LLAMA4 = dataclasses.replace(LLAMA, mlp_pattern=("dense", "moe"), moe=MoEConfig(
    n_experts=4, n_experts_per_token=1, router="sigmoid_topk", router_scales_input=True, renormalize=False,
    n_shared_experts=1, d_ff=48, aux_loss_coef=0.0))
QWEN2_MOE = tiny("qwen1.5-moe-a2.7b")


def _alive(config: ModelConfig, params: dict, tokens: np.ndarray, **off) -> None:
    """The golden's logits move when the knobs `off` are switched (the knob acts at this size)."""
    other = dataclasses.replace(config, moe=dataclasses.replace(config.moe, **off))
    kept = {k: v for k, v in params.items() if k in param_shapes(other)}
    assert np.abs(impl_numpy.forward(config, params, tokens) - impl_numpy.forward(other, kept, tokens)).max() > 1e-3


@pytest.mark.parametrize("config, knobs", [
    (LLAMA4, {"router_scales_input": False}),
    (LLAMA4, {"router": "softmax_topk"}),
    (dataclasses.replace(LLAMA4, moe=dataclasses.replace(LLAMA4.moe, n_experts_per_token=2)), {"renormalize": True}),
    (QWEN2_MOE, {"shared_expert_gate": False}),
    (dataclasses.replace(QWEN2_MOE, moe=dataclasses.replace(QWEN2_MOE.moe, shared_expert_gate=False)),
     {"n_shared_experts": 0, "shared_d_ff": None}),
], ids=["llama4-scales-input", "llama4-sigmoid", "llama4-top2", "qwen2-moe-gated-shared", "qwen2-moe-ungated-shared"])
def test_llama4_and_qwen2_moe_layers_match_the_golden(config, knobs):
    params = init_params(config, 1)
    tokens = routed_tokens(config, params, (2, 9), MARGIN, seed=1)
    _alive(config, params, tokens, **knobs)
    check_against_golden(config, params, tokens)
    model = build(config, params, torch.float64)
    model.loss(tokens).backward()
    grads = canonical_grads(model, params)
    u = {k: np.random.default_rng(2).standard_normal(v.shape) for k, v in params.items()}
    fd = directional_fd(config, params, tokens, u)
    assert sum(float((grads[k] * u[k]).sum()) for k in params) == pytest.approx(fd, rel=1e-5, abs=1e-8)


# --- training needs, the adapter, errors -------------------------------------------------------


@pytest.mark.parametrize("dispatch", DISPATCHES)
def test_every_expert_takes_part_in_the_graph_even_unchosen(dispatch):
    """Three tokens, k = 1 of 9 experts: 6 experts or more see no token, yet every parameter
    gets a gradient (zero for those experts), so DDP runs without find_unused_parameters."""
    config = dataclasses.replace(LLAMA, moe=MoEConfig(n_experts=9, n_experts_per_token=1, aux_loss_coef=0.1),
                                 mlp_pattern=("moe",))
    model = build(config, init_params(config, 0), moe_dispatch=dispatch)
    model.loss([[3, 5, 8]]).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []
    captured: dict = {}
    model([[3, 5, 8]], capture=captured)
    for i in moe_layers(config):
        used = set(captured[f"layers.{i}.router"].topk(1).indices.flatten().tolist())
        grad = model.layers[i].mlp.experts.w_up.grad  # [E, d, f]
        assert len(used) <= 3 and {e for e in range(9) if grad[e].abs().sum() > 0} <= used


def test_the_adapter_captures_router_logits_and_reports_the_chosen_experts():
    config = tiny("mixtral-8x7b")
    params = init_params(config, 0)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 5))
    adapter = TorchAdapter("float64", device="cpu")
    captured = adapter.capture(config, params, tokens)
    assert list(captured) == capture_names(config) and "layers.1.router" in captured
    routing = adapter.routing(config, params, tokens)
    ref: dict = {}
    impl_numpy.forward(config, params, tokens, capture=ref)
    for i in moe_layers(config):
        want = np.argsort(-ref[f"layers.{i}.router"], axis=-1)[..., :2]
        np.testing.assert_array_equal(np.sort(routing[f"layers.{i}"], axis=-1), np.sort(want, axis=-1))


def test_an_unknown_dispatch_is_refused_by_name():
    with pytest.raises(ValueError, match="moe_dispatch must be one of"):
        Transformer(tiny("mixtral-8x7b"), moe_dispatch="grouped")
    model = Transformer(tiny("mixtral-8x7b"))
    model.moe_dispatch = "dense"
    assert {layer.mlp.dispatch for layer in model.layers} == {"dense"}
    with pytest.raises(ValueError, match="moe_dispatch must be one of"):
        model.moe_dispatch = "fast"
