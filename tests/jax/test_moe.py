"""Mixtures of experts in the JAX twin (impl_jax/moe.py) against the float64 golden
(impl_numpy/moe.py).

The configs: every MoE preset at tiny size, and three made by hand for what no preset has:
a Llama-4-like one (sigmoid router, the weight on the expert input, no renormalisation, a
shared expert, dense and MoE layers alternating), a Qwen2-MoE-like one (two shared experts'
width, gated) and plain GELU experts (GPT-2's MLP).  For each, in float64 (x64 on): prefill
logits and every capture (the router logits included) meet the float64 row, decode through the
KV cache equals the golden prefill, a batch equals its rows run alone, the loss (cross-entropy
plus the load-balancing loss) equals the golden's, and its gradient equals directional finite
differences of the golden loss.  Finite differences and bfloat16 need inputs away from routing
ties (a flip moves the output by O(1)): `routed_case` takes the first seed whose golden gaps
between the k-th and (k+1)-th router logit clear a margin.  Drawn configs
(tests/strategies.py `moe_configs`) run prefill, decode and loss in float64.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmref import impl_jax
from lmref import impl_numpy
from lmref.conformance.routing import smallest_gaps
from lmref.impl_jax import moe as jax_moe
from lmref.impl_jax.adapter import JaxAdapter
from lmref.impl_numpy import moe as numpy_moe
from lmref.spec.captures import capture_names, moe_layers
from lmref.spec.config import ModelConfig, MoEConfig
from lmref.spec.features import MOE, required_features
from lmref.spec.params import init_params
from lmref.spec.presets import PRESETS, tiny
from tests.jax.common import BFLOAT16, FLOAT32, assert_float32_close, fewer_examples, nmse, note_case
from tests.jax.test_bf16 import WEIGHT_ROUNDING_FACTOR, rounded_to_bfloat16
from tests.jax.test_grad import ATOL, RTOL, golden_slope, unit_direction
from tests.jax.test_issue11_features import assert_float64_close
from tests.xla_compiles import default_xla_optimizations
from tests.strategies import moe_configs, seeds, token_batches

SHAPE, PROMPT = (2, 11), 3  # [B, S]; decode: a prefill of 3 tokens, then 8 single steps
FD_GAP = 1e-3  # finite differences move a router logit by ~1e-8: far below this gap
BF16_GAP = 0.2  # bfloat16 moves a router logit by ~0.02 (conformance/routing.py): far below this
BF16_SHAPE = (1, 3)  # few tokens, so that a seed whose every gap clears 0.2 exists

HAND_MADE = {
    # Llama 4 (transformers `Llama4TextMoe`): sigmoid of the top-k logits scales the expert's
    # input, a shared expert beside, MoE every other layer; k = 2 (Llama 4 has 1) so two
    # scaled inputs add up
    "llama4-like": tiny("llama3", name="llama4-like", mlp_pattern=("dense", "moe"), moe=MoEConfig(
        n_experts=5, n_experts_per_token=2, router="sigmoid_topk", d_ff=40, router_scales_input=True,
        renormalize=False, n_shared_experts=1, aux_loss_coef=0.01)),
    # Qwen2-MoE (transformers `Qwen2MoeSparseMoeBlock`): softmax, not renormalised, a shared
    # expert scaled by sigmoid(x @ shared_gate); two shared experts' width (shared_d_ff None)
    "qwen2-moe-like": tiny("llama3", name="qwen2-moe-like", qkv_bias=True, mlp_pattern=("moe",), moe=MoEConfig(
        n_experts=6, n_experts_per_token=3, d_ff=24, renormalize=False, n_shared_experts=2,
        shared_expert_gate=True, aux_loss_coef=0.01)),
    # plain (not gated) GELU experts, learned positions, MoE then dense
    "plain-gelu-experts": tiny("gpt2", name="plain-gelu-experts", mlp_bias=False, mlp_pattern=("moe", "dense"),
                               moe=MoEConfig(n_experts=4, n_experts_per_token=2, aux_loss_coef=0.1)),
}
CONFIGS = {name: tiny(name) for name in sorted(PRESETS) if PRESETS[name].moe is not None} | HAND_MADE
JIT_CONFIGS = ("mixtral-8x7b", "llama4-like", "qwen2-moe-like")
BF16_CONFIGS = ("mixtral-8x7b", "llama4-like")


def tokens_for(config: ModelConfig, seed: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, shape)  # [B, S]


def smallest_gap(config: ModelConfig, captured: dict) -> float:
    """The smallest gap z_(k) - z_(k+1) over every token of every "moe" layer."""
    return float(smallest_gaps(config, captured).min())


def routed_case(config: ModelConfig, min_gap: float, shape: tuple[int, int] = SHAPE) -> tuple[int, dict, np.ndarray]:
    """(seed, params, tokens) of the first seed below 32 whose golden routing gaps all clear
    `min_gap`, so that no rounding or finite-difference step can flip an expert."""
    for seed in range(32):
        params, tokens = init_params(config, seed), tokens_for(config, seed, shape)
        golden: dict = {}
        impl_numpy.forward(config, params, tokens, capture=golden)
        if smallest_gap(config, golden) >= min_gap:
            return seed, params, tokens
    raise AssertionError(f"{config.name}: no seed below 32 keeps every routing gap >= {min_gap}")


def chosen_sets(config: ModelConfig, captured: dict) -> dict[str, np.ndarray]:
    """{layer: the chosen experts [B, S, k], sorted}, ranked from captured router logits."""
    k = config.moe.n_experts_per_token
    return {i: np.sort(np.argsort(-np.asarray(captured[f"layers.{i}.router"], np.float64), axis=-1,
                                  kind="stable")[..., :k], axis=-1) for i in moe_layers(config)}


def test_the_configs_cover_every_moe_feature_and_the_twin_declares_them():
    covered = frozenset().union(*(required_features(c) for c in CONFIGS.values()))
    assert set(MOE) <= covered, f"no config needs {sorted(set(MOE) - covered)}"
    assert set(MOE) <= impl_jax.FEATURES


@pytest.mark.parametrize("name", list(CONFIGS))
def test_route_and_load_balancing_loss_match_the_golden(name):
    """On random router logits [B, S, E] of two layers (no ties), in float64: the same experts
    in the same order (largest first), the same weights, the same auxiliary losses."""
    config = CONFIGS[name]
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal((2, 5, config.moe.n_experts)) for _ in range(2)]  # [B, S, E] per layer
    with jax.enable_x64(True):
        experts, weights = jax.jit(jax_moe.route, static_argnums=0)(config, logits[0])
        aux = jax.jit(jax_moe.load_balancing_loss, static_argnums=0)(config, logits)
        z_loss = jax.jit(jax_moe.router_z_loss, static_argnums=0)(config, logits)
    ref_experts, ref_weights = numpy_moe.route(config, logits[0])
    np.testing.assert_array_equal(np.asarray(experts), ref_experts)
    np.testing.assert_allclose(np.asarray(weights), ref_weights, rtol=1e-12, atol=1e-15)
    assert float(aux) == pytest.approx(numpy_moe.load_balancing_loss(config, logits), rel=1e-12)
    assert float(z_loss) == pytest.approx(numpy_moe.router_z_loss(config, logits), rel=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_float64_prefill_and_captures_match_the_golden(name):
    config = CONFIGS[name]
    params, tokens = init_params(config, 1), tokens_for(config, 1)
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, capture=golden)
    captured: dict = {}
    with jax.enable_x64(True):
        logits = impl_jax.forward(config, impl_jax.from_canonical(params, "float64"), tokens, capture=captured)
    assert logits.dtype == np.float64
    assert_float64_close(logits, ref, f"{name}: logits")
    assert list(captured) == list(golden) == capture_names(config)
    for i in moe_layers(config):
        assert captured[f"layers.{i}.router"].shape == (*SHAPE, config.moe.n_experts)
    for component, value in golden.items():
        assert_float64_close(captured[component], value, f"{name}: capture {component}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_float64_decode_equals_the_golden_prefill(name):
    config = CONFIGS[name]
    params, tokens = init_params(config, 2), tokens_for(config, 2)
    with jax.enable_x64(True):
        decoded = impl_jax.decode(config, impl_jax.from_canonical(params, "float64"), tokens, PROMPT)
    assert_float64_close(decoded, impl_numpy.forward(config, params, tokens), f"{name}: decode vs golden prefill")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_batch_equals_its_rows_alone(name):
    """Routing is per token: no row of a batch changes another's experts or outputs."""
    config = CONFIGS[name]
    params, tokens = init_params(config, 3), tokens_for(config, 3, (3, 7))
    with jax.enable_x64(True):
        params64 = impl_jax.from_canonical(params, "float64")
        batched = np.asarray(impl_jax.forward(config, params64, tokens))
        for b in range(tokens.shape[0]):
            alone = impl_jax.forward(config, params64, tokens[b : b + 1])
            assert_float64_close(batched[b : b + 1], alone, f"{name}: row {b} in the batch vs alone")


# Gradients on one config per routing family by default (softmax renormalised, not renormalised
# with a gated shared expert, sigmoid scaling the input, and the hand-made ones); every preset
# under `make test-thorough` (the torch twin's gradient tests cover every preset by default).
GRADIENT_DEFAULT = ("mixtral-8x7b", "qwen1.5-moe-a2.7b", "llama4-scout", *HAND_MADE)


@pytest.mark.parametrize("name", [n if n in GRADIENT_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
                                  for n in CONFIGS])
def test_float64_loss_and_gradient_match_the_golden(name):
    """The loss (cross-entropy + aux_loss_coef * load-balancing loss) equals the golden's; its
    gradient along a random direction equals central differences of the golden loss, on
    inputs whose routing gaps all clear FD_GAP."""
    config = CONFIGS[name]
    seed, params, tokens = routed_case(config, FD_GAP)
    direction = unit_direction(params, seed)
    with jax.enable_x64(True):
        value, grads = jax.value_and_grad(impl_jax.loss, argnums=1)(
            config, impl_jax.from_canonical(params, "float64"), tokens)
    assert float(value) == pytest.approx(impl_numpy.loss(config, params, tokens), rel=1e-12)
    slope = sum(float(np.vdot(np.asarray(grads[k]), direction[k])) for k in params)
    expected = golden_slope(config, params, tokens, direction)
    assert abs(slope - expected) <= ATOL + RTOL * abs(expected), f"seed {seed}: grad . d = {slope!r}, fd = {expected!r}"


def test_the_auxiliary_loss_is_part_of_the_loss():
    """The loss without the auxiliary term differs by aux_loss_coef times the golden's
    load-balancing loss over the router logits of all S positions."""
    config = CONFIGS["mixtral-8x7b"]
    plain = dataclasses.replace(config, moe=dataclasses.replace(config.moe, aux_loss_coef=0.0))
    params, tokens = init_params(config, 6), tokens_for(config, 6)
    golden: dict = {}
    impl_numpy.forward(config, params, tokens, capture=golden)
    aux = numpy_moe.load_balancing_loss(config, [golden[f"layers.{i}.router"] for i in moe_layers(config)])
    with jax.enable_x64(True):
        params64 = impl_jax.from_canonical(params, "float64")
        difference = float(impl_jax.loss(config, params64, tokens) - impl_jax.loss(plain, params64, tokens))
    assert difference == pytest.approx(config.moe.aux_loss_coef * aux, rel=1e-9)


@pytest.mark.parametrize("name", JIT_CONFIGS)
def test_forward_jit_and_loss_jit_as_shipped_match_the_golden(name):
    """The jitted cores called directly, with XLA's default optimisations (tests/jax/test_jit.py),
    in float32: forward_jit (with and without captures), loss_jit, and decode."""
    config = dataclasses.replace(CONFIGS[name], name=f"{name}-default-optimizations")  # a fresh jit key
    params, tokens = init_params(config, 5), tokens_for(config, 5)
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, capture=golden)
    jax_params = impl_jax.from_canonical(params)
    with default_xla_optimizations():
        logits, cache, _ = impl_jax.forward_jit(config, jax_params, tokens)
        _, _, captured = impl_jax.forward_jit(config, jax_params, tokens, capture=True)
        loss = float(impl_jax.loss_jit(config, jax_params, tokens))
        decoded = impl_jax.decode(config, jax_params, tokens, PROMPT)
    assert cache is None
    assert_float32_close(logits, ref, f"{name}: forward_jit")
    assert_float32_close(decoded, ref, f"{name}: decode")
    for component, value in golden.items():
        assert_float32_close(captured[component], value, f"{name}: capture {component}")
    assert loss == pytest.approx(impl_numpy.loss(config, params, tokens), rel=FLOAT32.loss_rtol, abs=FLOAT32.loss_atol)


@pytest.mark.parametrize("name", BF16_CONFIGS)
def test_bfloat16_chooses_the_golden_experts(name):
    """Where every golden gap clears BF16_GAP, bfloat16 params choose the golden's experts at
    every token and layer, and the logits keep the bound of tests/jax/test_bf16.py."""
    config = CONFIGS[name]
    _, params, tokens = routed_case(config, BF16_GAP, BF16_SHAPE)
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, capture=golden)
    captured: dict = {}
    logits = impl_jax.forward(config, impl_jax.from_canonical(params, "bfloat16"), tokens, capture=captured)
    assert logits.dtype == "bfloat16"
    assert captured[f"layers.{moe_layers(config)[0]}.router"].dtype == np.float32  # routing in float32
    ours, theirs = chosen_sets(config, captured), chosen_sets(config, golden)
    for i in moe_layers(config):
        np.testing.assert_array_equal(ours[i], theirs[i], err_msg=f"{name}: layer {i} chose other experts")
    storage = nmse(impl_numpy.forward(config, rounded_to_bfloat16(params), tokens), ref)
    assert nmse(logits, ref) <= max(BFLOAT16.nmse, WEIGHT_ROUNDING_FACTOR * storage)


def test_the_adapter_reports_the_golden_routing():
    """JaxAdapter.routing (conformance/routing.py) in float32 on a case with clear margins."""
    config = CONFIGS["qwen2-moe-like"]
    _, params, tokens = routed_case(config, FD_GAP)
    routing = JaxAdapter().routing(config, params, tokens)
    captured: dict = {}
    impl_numpy.forward(config, params, tokens, capture=captured)
    assert list(routing) == [f"layers.{i}" for i in moe_layers(config)]
    for i in moe_layers(config):
        expected = numpy_moe.route(config, captured[f"layers.{i}.router"])[0]
        np.testing.assert_array_equal(routing[f"layers.{i}"], expected)


@pytest.mark.slow  # ~30 s; tests/torch/test_moe.py draws the same configs against the golden by default
@fewer_examples(2)  # four compilations per example: prefill, decode (two), loss
@given(config=moe_configs(), seed=seeds, data=st.data())
def test_drawn_moe_configs_match_the_golden_in_float64(config, seed, data):
    tokens = data.draw(token_batches(config).filter(lambda t: t.shape[1] >= 2), label="tokens")
    prompt_len = data.draw(st.integers(1, tokens.shape[1]), label="prompt_len")
    note_case(seed, tokens)
    params = init_params(config, seed)
    ref = impl_numpy.forward(config, params, tokens)
    with jax.enable_x64(True):
        params64 = impl_jax.from_canonical(params, "float64")
        assert_float64_close(impl_jax.forward(config, params64, tokens), ref, "prefill")
        assert_float64_close(impl_jax.decode(config, params64, tokens, prompt_len), ref, "decode vs golden prefill")
        loss = float(impl_jax.loss(config, params64, tokens))
    assert loss == pytest.approx(impl_numpy.loss(config, params, tokens), rel=1e-12)
