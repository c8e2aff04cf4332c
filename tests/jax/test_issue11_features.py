"""Issue 11's features in the JAX twin (Gemma 2/3, Qwen 3, OLMo 2: spec/MATH.md) against the
float64 golden, case by case, until tests/strategies.py draws their knobs.

Each case is a tiny preset with the knob(s) set; the tiny presets that need the features
(Gemma 1/2/3, Qwen 3, OLMo 2) run too.  In float64 (x64 on), the twin's prefill logits and
every capture, and its decode through the KV cache (which must equal the golden prefill),
meet the float64 row (conformance/tolerances.py).  Each case's knobs are alive: the golden
with them differs from the golden without.  Sliding windows are shorter than the sequence.
The combined (Gemma 2/3- and OLMo 2-like) cases also run the float64 gradient, bfloat16 and
the shipped, optimised jit, the checks tests/jax runs on drawn configs.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from lmref import impl_jax
from lmref import impl_numpy
from lmref.conformance.tolerances import DEFAULT_ROWS
from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.features import GEMMA_QWEN3_OLMO2, required_features
from lmref.spec.params import init_params, param_shapes
from lmref.spec.presets import PRESETS, tiny
from tests.jax.common import BFLOAT16, assert_close, assert_float32_close, nmse
from tests.jax.test_bf16 import WEIGHT_ROUNDING_FACTOR, rounded_to_bfloat16
from tests.jax.test_grad import ATOL, RTOL, golden_slope, unit_direction
from tests.xla_compiles import default_xla_optimizations

FLOAT64 = DEFAULT_ROWS["float64"]  # nmse 1e-24, |out - ref| <= 1e-9 + 1e-9 |ref|
ISSUE_11 = frozenset(GEMMA_QWEN3_OLMO2)  # spec/features.py
SEQ, PROMPT, WINDOW = 11, 3, 4  # the windows are shorter than the sequence and than the decoded part
SLIDING = dict(attn_pattern=("sliding", "global"), sliding_window=WINDOW)
GLOBAL_SCALING = dict(rope_scaling=RopeScaling(kind="linear", factor=4.0))


@dataclasses.dataclass(frozen=True)
class Case:
    """tiny(base) with `context` (the model around the knobs) and `knobs` (what is tested)."""

    base: str
    context: dict
    knobs: dict

    def config(self, with_knobs: bool = True) -> ModelConfig:
        return tiny(self.base, max_seq_len=32, **self.context, **(self.knobs if with_knobs else {}))


GEMMA2 = dict(norm_placement="sandwich", norm_unit_offset=True, embedding_scale="sqrt_d_model", query_scale_dim=24,
              attn_softcap=2.0, final_logit_softcap=3.0)
GEMMA3 = dict(norm_placement="sandwich", norm_unit_offset=True, embedding_scale="sqrt_d_model", qk_norm="per_head",
              rope_theta_local=10.0)
CASES = {
    "embedding-scale-learned-positions-tied-head": Case("gpt2", {}, dict(embedding_scale="sqrt_d_model")),
    "embedding-scale-rope-sliding": Case("mistral-7b", dict(sliding_window=WINDOW),
                                         dict(embedding_scale="sqrt_d_model")),
    "unit-offset-rmsnorm": Case("llama3", {}, dict(norm_unit_offset=True)),
    "unit-offset-layernorm-bias": Case("gpt2", {}, dict(norm_unit_offset=True)),
    "sandwich-rmsnorm-sliding": Case("mistral-7b", dict(sliding_window=WINDOW), dict(norm_placement="sandwich")),
    "sandwich-layernorm-bias": Case("gpt2", {}, dict(norm_placement="sandwich")),
    "post-sublayer-rmsnorm-gqa": Case("llama3", SLIDING, dict(norm_placement="post_sublayer")),
    "post-sublayer-weightless-layernorm": Case("olmo", {}, dict(norm_placement="post_sublayer")),
    "qk-per-head-gqa-sliding": Case("llama3", SLIDING, dict(qk_norm="per_head")),
    "qk-per-head-weightless-clip": Case("olmo", dict(qkv_clip=0.5), dict(qk_norm="per_head")),
    "qk-per-head-unit-offset": Case("mistral-7b", dict(sliding_window=WINDOW, norm_unit_offset=True),
                                    dict(qk_norm="per_head")),
    "qk-per-projection-gqa": Case("llama3", {}, dict(qk_norm="per_projection")),
    "qk-per-projection-clip-alibi-sliding": Case("olmo-alibi", dict(qkv_clip=0.5, **SLIDING),
                                                 dict(qk_norm="per_projection")),
    "query-scale-gqa-sliding": Case("llama3", SLIDING, dict(query_scale_dim=40)),
    "attn-softcap-gqa": Case("llama3", {}, dict(attn_softcap=1.0)),
    "attn-softcap-alibi-sliding": Case("olmo-alibi", SLIDING, dict(attn_softcap=1.0)),
    "local-theta-global-scaling": Case("mistral-7b", SLIDING | GLOBAL_SCALING, dict(rope_theta_local=10.0)),
    "local-theta-interleaved-partial": Case("llama3", SLIDING | dict(rope_layout="interleaved", rope_fraction=0.5),
                                            dict(rope_theta_local=10.0)),
    "head-softcap": Case("llama3", {}, dict(final_logit_softcap=1.0)),
    "head-softcap-tied-bias": Case("gpt2", {}, dict(final_logit_softcap=1.0)),
    "gemma2-like": Case("llama3", SLIDING | dict(tie_embeddings=True, activation="gelu_tanh"), GEMMA2),
    "gemma3-like": Case("llama3", dict(attn_pattern=("sliding", "sliding", "global"), n_layers=3,
                                       sliding_window=WINDOW, rope_theta=1e6, **GLOBAL_SCALING), GEMMA3),
    "olmo2-like": Case("llama3", {}, dict(norm_placement="post_sublayer", qk_norm="per_projection")),
}
COMBINED = ("gemma2-like", "gemma3-like", "olmo2-like")
# and the real presets that need the features (Gemma 1/2/3, Qwen 3, OLMo 2), at tiny size
PRESET_CONFIGS = {arch: tiny(arch) for arch in sorted(PRESETS) if required_features(tiny(arch)) & ISSUE_11}
FLOAT64_CONFIGS = {name: case.config() for name, case in CASES.items()} | PRESET_CONFIGS


def tokens_for(config: ModelConfig, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, config.vocab_size, (2, SEQ))  # [B, S]


def assert_float64_close(out, ref: np.ndarray, what: str) -> None:
    assert_close(out, ref, nmse_max=FLOAT64.nmse, atol=FLOAT64.atol, rtol=FLOAT64.rtol, what=what)


def test_the_cases_cover_every_feature_and_the_twin_declares_them():
    covered = frozenset().union(*(required_features(case.config()) for case in CASES.values()))
    assert ISSUE_11 <= covered, f"no case needs {sorted(ISSUE_11 - covered)}"
    assert ISSUE_11 <= impl_jax.FEATURES


@pytest.mark.parametrize("name", list(CASES))
def test_each_knob_changes_the_golden(name):
    """The knobs act at this size: without them, on the same weights where the names agree
    (the stored w of a (1 + w) norm included), the golden's logits move (nmse > 1e-4)."""
    case = CASES[name]
    on, off = case.config(), case.config(with_knobs=False)
    params, tokens = init_params(on, 0), tokens_for(on)
    off_params = init_params(off, 0) | {k: v for k, v in params.items() if k in param_shapes(off)}
    moved = nmse(impl_numpy.forward(off, off_params, tokens), impl_numpy.forward(on, params, tokens))
    assert moved > 1e-4, f"{name}: the knobs {case.knobs} move the logits by nmse {moved:.1e} only"


@pytest.mark.parametrize("name", list(FLOAT64_CONFIGS))
def test_float64_prefill_and_captures_match_the_golden(name):
    config = FLOAT64_CONFIGS[name]
    params, tokens = init_params(config, 1), tokens_for(config, 1)
    golden: dict = {}
    ref = impl_numpy.forward(config, params, tokens, capture=golden)
    captured: dict = {}
    with jax.enable_x64(True):
        logits = impl_jax.forward(config, impl_jax.from_canonical(params, "float64"), tokens, capture=captured)
    assert logits.dtype == np.float64
    assert_float64_close(logits, ref, f"{name}: logits")
    assert list(captured) == list(golden)
    for component, value in golden.items():  # layers.{i}.attn / .mlp: after the post norms
        assert_float64_close(captured[component], value, f"{name}: capture {component}")


@pytest.mark.parametrize("name", list(FLOAT64_CONFIGS))
def test_float64_decode_equals_the_golden_prefill(name):
    config = FLOAT64_CONFIGS[name]
    params, tokens = init_params(config, 2), tokens_for(config, 2)
    with jax.enable_x64(True):
        decoded = impl_jax.decode(config, impl_jax.from_canonical(params, "float64"), tokens, PROMPT)
    assert_float64_close(decoded, impl_numpy.forward(config, params, tokens), f"{name}: decode vs golden prefill")


@pytest.mark.parametrize("name", COMBINED)
def test_float64_gradient_matches_finite_differences_of_the_golden(name):
    config = CASES[name].config()
    params, tokens = init_params(config, 3), tokens_for(config, 3)
    direction = unit_direction(params, 3)
    with jax.enable_x64(True):
        value, grads = jax.value_and_grad(impl_jax.loss, argnums=1)(
            config, impl_jax.from_canonical(params, "float64"), tokens)
    assert float(value) == pytest.approx(impl_numpy.loss(config, params, tokens), rel=1e-12)
    slope = sum(float(np.vdot(np.asarray(grads[k]), direction[k])) for k in params)
    expected = golden_slope(config, params, tokens, direction)
    assert abs(slope - expected) <= ATOL + RTOL * abs(expected), f"grad . d = {slope!r}, fd = {expected!r}"


@pytest.mark.parametrize("name", COMBINED)
def test_bfloat16_error_is_bounded_by_weight_rounding(name):
    """The bound of tests/jax/test_bf16.py."""
    config = CASES[name].config()
    params, tokens = init_params(config, 4), tokens_for(config, 4)
    logits = impl_jax.forward(config, impl_jax.from_canonical(params, "bfloat16"), tokens)
    assert logits.dtype == "bfloat16"
    ref = impl_numpy.forward(config, params, tokens)
    limit = max(BFLOAT16.nmse, WEIGHT_ROUNDING_FACTOR * nmse(impl_numpy.forward(config, rounded_to_bfloat16(params),
                                                                                   tokens), ref))
    assert nmse(logits, ref) <= limit


@pytest.mark.parametrize("name", COMBINED)
def test_shipped_jit_matches_the_golden_in_float32(name):
    """XLA's default optimisations (tests/jax/test_jit.py), forward and decode."""
    config = dataclasses.replace(CASES[name].config(), name=f"{name}-default-optimizations")  # a fresh jit key
    params, tokens = init_params(config, 5), tokens_for(config, 5)
    ref = impl_numpy.forward(config, params, tokens)
    jax_params = impl_jax.from_canonical(params)
    with default_xla_optimizations():
        assert_float32_close(impl_jax.forward(config, jax_params, tokens), ref, f"{name}: forward")
        assert_float32_close(impl_jax.decode(config, jax_params, tokens, PROMPT), ref, f"{name}: decode")
