"""The features of issue 11 (Gemma 2/3, Qwen 3, OLMo 2) in the torch twin against the golden,
on fixed tiny configs: each feature alone on a few bases (GQA, sliding windows shorter than
the sequence, LayerNorm with bias, weightless norms, ALiBi, learned positions, a tied head),
then together as in the models that use them.

    embedding.scale, norm.unit_offset, block.sandwich_norm, block.post_sublayer_norm,
    attn.qk_norm.per_head, attn.qk_norm.per_projection, attn.query_scale, attn.softcap,
    rope.local_theta, head.softcap

Until tests/strategies.py draws these knobs, these cases are what tests them: prefill logits
(float64 on both kernels to the float64 row, float32 to its row), decode and chunked prefill
equal to prefill, the captured intermediates (what each sublayer adds, after its post norm),
the canonical parameter names, gradients, and bf16 / fp16 on the combined cases.  Each case
first proves its knob alive: the golden's logits move when the knob is switched off.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lmref import impl_numpy
from lmref import impl_torch
from lmref.impl_torch.attention import ATTN_IMPLS
from lmref.impl_torch.model import torch_name
from lmref.spec import init_params, param_shapes, tiny
from lmref.spec.captures import capture_names
from lmref.spec.config import ModelConfig, RopeScaling
from lmref.spec.features import GEMMA_QWEN3_OLMO2, required_features
from tests.torch.helpers import BFLOAT16, FLOAT16, FLOAT32, FLOAT64, assert_close, build, numpy64
from tests.torch.test_grad import canonical_grads, directional_fd

SEED = 3
BATCH, SEQ = 2, 11  # SEQ > TINY_WINDOW (5): the sliding layers drop keys
ALIVE = 1e-3  # the least max |logits change| that counts a knob as acting

LLAMA, MISTRAL, GPT2, OLMO, MPT = (tiny(a) for a in ("llama3", "mistral-7b", "gpt2", "olmo", "mpt"))
ALTERNATING = dataclasses.replace(MISTRAL, attn_pattern=("sliding", "global"))  # Gemma 2's layers
# Gemma 2 / 3 shapes: d_model != n_heads * head_dim, tied head, GeGLU (tanh).
GEMMA2_BASE = dataclasses.replace(ALTERNATING, d_model=64, d_ff=192, tie_embeddings=True, activation="gelu_tanh")
GEMMA3_BASE = dataclasses.replace(GEMMA2_BASE, n_layers=4, attn_pattern=("sliding", "sliding", "global"),
                                  rope_scaling=RopeScaling(kind="linear", factor=8.0))
GEMMA_NORMS = dict(embedding_scale="sqrt_d_model", norm_unit_offset=True, norm_placement="sandwich")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    base: ModelConfig
    knobs: dict  # the fields under test; `base` is the same model with them off

    @property
    def config(self) -> ModelConfig:
        return dataclasses.replace(self.base, **self.knobs)


CASES = [
    Case("embed_scale-llama", LLAMA, dict(embedding_scale="sqrt_d_model")),
    Case("embed_scale-gpt2_learned_tied", GPT2, dict(embedding_scale="sqrt_d_model")),
    Case("unit_offset-llama", LLAMA, dict(norm_unit_offset=True)),
    Case("unit_offset-gpt2_layernorm_bias", GPT2, dict(norm_unit_offset=True)),
    Case("sandwich-mistral_sliding", MISTRAL, dict(norm_placement="sandwich")),
    Case("sandwich-gpt2_layernorm_bias", GPT2, dict(norm_placement="sandwich")),
    Case("post_sublayer-llama", LLAMA, dict(norm_placement="post_sublayer")),
    Case("post_sublayer-olmo_weightless", OLMO, dict(norm_placement="post_sublayer")),
    Case("qk_per_head-mistral_gqa_sliding", MISTRAL, dict(qk_norm="per_head")),
    Case("qk_per_head-llama_bias_clip_offset", dataclasses.replace(LLAMA, qkv_bias=True, qkv_clip=0.5),
         dict(qk_norm="per_head", norm_unit_offset=True)),
    Case("qk_per_head-olmo_weightless", OLMO, dict(qk_norm="per_head")),
    Case("qk_per_projection-llama_gqa", LLAMA, dict(qk_norm="per_projection")),
    Case("qk_per_projection-olmo_weightless_clip", dataclasses.replace(OLMO, qkv_clip=0.3),
         dict(qk_norm="per_projection")),
    Case("qk_per_projection-mpt_alibi_layernorm", MPT, dict(qk_norm="per_projection")),
    Case("query_scale-llama", LLAMA, dict(query_scale_dim=7)),
    Case("query_scale-mistral_sliding", MISTRAL, dict(query_scale_dim=40)),
    Case("attn_softcap-llama", LLAMA, dict(attn_softcap=1.0)),
    Case("attn_softcap-mistral_sliding", MISTRAL, dict(attn_softcap=1.0)),
    Case("attn_softcap-mpt_alibi", MPT, dict(attn_softcap=1.0)),
    Case("local_theta-alternating", ALTERNATING, dict(rope_theta_local=100.0)),
    Case("local_theta-scaled_partial_interleaved",
         dataclasses.replace(ALTERNATING, rope_scaling=RopeScaling(kind="linear", factor=4.0), rope_fraction=0.5,
                             rope_layout="interleaved"),
         dict(rope_theta_local=100.0)),
    Case("head_softcap-llama", LLAMA, dict(final_logit_softcap=1.5)),
    Case("head_softcap-gpt2_tied_bias", dataclasses.replace(GPT2, lm_head_bias=True), dict(final_logit_softcap=0.3)),
    # the models: Gemma 2 (transformers Gemma2DecoderLayer / Gemma2Attention), Gemma 3
    # (Gemma3DecoderLayer: + per-head q/k norms, local theta), OLMo 2 (Olmo2DecoderLayer)
    Case("gemma2_like", GEMMA2_BASE, GEMMA_NORMS | dict(query_scale_dim=24, attn_softcap=2.0,
                                                         final_logit_softcap=0.5)),
    Case("gemma3_like", GEMMA3_BASE, GEMMA_NORMS | dict(qk_norm="per_head", query_scale_dim=24,
                                                         rope_theta_local=100.0)),
    Case("olmo2_like", dataclasses.replace(LLAMA, n_kv_heads=LLAMA.n_heads),
         dict(norm_placement="post_sublayer", qk_norm="per_projection")),
]
MODELS = [case for case in CASES if case.id.endswith("_like")]


def ids(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]


def example(case: Case) -> tuple[ModelConfig, dict, np.ndarray]:
    config = case.config
    tokens = np.random.default_rng(SEED).integers(0, config.vocab_size, size=(BATCH, SEQ))
    return config, init_params(config, SEED), tokens


ISSUE_11 = frozenset(GEMMA_QWEN3_OLMO2)  # spec/features.py


def test_every_issue_11_feature_has_a_case():
    """The features the cases switch on are exactly issue 11's, and the twin declares them."""
    covered = set().union(*(required_features(case.config) - required_features(case.base) for case in CASES))
    assert covered == ISSUE_11 and ISSUE_11 <= impl_torch.FEATURES


def logit_change(config: ModelConfig, params: dict, tokens: np.ndarray, off: ModelConfig) -> float:
    """max |golden logits of `config` - those of `off`|, with the same weights where the shapes
    allow (the math alone differs), else `off`'s own (init_params is keyed by name)."""
    off_params = params if param_shapes(off) == param_shapes(config) else init_params(off, SEED)
    return float(np.abs(impl_numpy.forward(config, params, tokens) - impl_numpy.forward(off, off_params, tokens)).max())


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_the_knobs_are_alive(case):
    config, params, tokens = example(case)
    change = logit_change(config, params, tokens, case.base)
    assert change > ALIVE, f"{case.id}: the knobs {case.knobs} move the logits by {change:.1e} only"


@pytest.mark.parametrize("case, knob", [(case, knob) for case in MODELS for knob in case.knobs],
                         ids=[f"{case.id}-{knob}" for case in MODELS for knob in case.knobs])
def test_each_knob_of_a_model_is_alive(case, knob):
    """In the combined cases every knob acts: switching it alone off moves the logits."""
    config, params, tokens = example(case)
    change = logit_change(config, params, tokens, dataclasses.replace(config, **{knob: getattr(case.base, knob)}))
    assert change > ALIVE, f"{case.id}: {knob} moves the logits by {change:.1e} only"


@pytest.mark.parametrize("attn_impl", ATTN_IMPLS)
@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_prefill_matches_the_golden(case, attn_impl):
    config, params, tokens = example(case)
    ref = impl_numpy.forward(config, params, tokens)
    assert_close(numpy64(build(config, params, torch.float64, attn_impl)(tokens)), ref, FLOAT64,
                 f"{case.id} float64 {attn_impl}")
    assert_close(numpy64(build(config, params, torch.float32, attn_impl)(tokens)), ref, FLOAT32,
                 f"{case.id} float32 {attn_impl}")


@pytest.mark.parametrize("attn_impl", ATTN_IMPLS)
@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_decode_equals_prefill(case, attn_impl):
    """Token by token after prompts of 1 and 4, and chunks of 4, 3, 4 into a roomy cache, all
    to the float64 row of the golden (and of the model's own prefill)."""
    config, params, tokens = example(case)
    ref = impl_numpy.forward(config, params, tokens)
    model = build(config, params, torch.float64, attn_impl)
    with torch.no_grad():
        prefill = numpy64(model(tokens))
        for prompt_len in (1, 4):
            decoded = numpy64(model.decode(tokens, prompt_len))
            assert_close(decoded, ref, FLOAT64, f"{case.id} {attn_impl} decode after {prompt_len}")
            assert_close(decoded, prefill, FLOAT64, f"{case.id} {attn_impl} decode vs prefill")
        cache = model.new_cache(BATCH)
        chunks = [model(chunk, cache=cache) for chunk in np.split(tokens, [4, 7], axis=1)]
    assert_close(numpy64(torch.cat(chunks, dim=1)), ref, FLOAT64, f"{case.id} {attn_impl} chunked prefill")


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_captures_match_the_golden(case):
    """`layers.{i}.attn` / `.mlp` are what each sublayer adds to the stream, post norm included."""
    config, params, tokens = example(case)
    ref: dict = {}
    impl_numpy.forward(config, params, tokens, capture=ref)
    got: dict = {}
    impl_torch.forward(config, params, tokens, capture=got, dtype=torch.float64)
    assert list(got) == list(ref) == capture_names(config)
    for name in ref:
        assert_close(numpy64(got[name]), ref[name], FLOAT64, f"{case.id} {name}")


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_parameters_are_the_canonical_ones(case):
    """The module holds exactly the canonical params (post norms, q/k norms), round trips them
    exactly, and a freshly built model's norms scale by 1 ((1 + w) norms hold w = 0)."""
    config, params, _ = example(case)
    fresh = impl_torch.Transformer(config, dtype=torch.float64)
    assert set(dict(fresh.named_parameters())) == {torch_name(name)[0] for name in param_shapes(config)}
    identity = 0.0 if config.norm_unit_offset else 1.0
    for name, p in fresh.named_parameters():
        if "norm" in name and name.endswith(".weight"):
            assert torch.all(p == identity), name
    back = build(config, params, torch.float64).to_canonical()
    assert list(back) == list(param_shapes(config))
    for name, value in back.items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)


@pytest.mark.parametrize("case", MODELS, ids=ids(MODELS))
def test_loss_gradient_matches_golden_finite_differences(case):
    config, params, tokens = example(case)
    model = build(config, params, torch.float64, "sdpa")
    model.loss(tokens).backward()
    grads = canonical_grads(model, params)
    rng = np.random.default_rng(SEED)
    u = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    norm = np.sqrt(sum((d**2).sum() for d in u.values()))
    u = {k: d / norm for k, d in u.items()}  # a unit direction over all parameters
    autograd = sum(float((grads[k] * u[k]).sum()) for k in params)
    fd = directional_fd(config, params, tokens, u)
    assert abs(autograd - fd) <= 1e-8 + 1e-5 * abs(fd), f"autograd {autograd!r} vs finite differences {fd!r}"


@pytest.mark.parametrize("dtype, row", [(torch.bfloat16, BFLOAT16), (torch.float16, FLOAT16)], ids=str)
@pytest.mark.parametrize("case", MODELS, ids=ids(MODELS))
def test_half_precision_meets_the_row(case, dtype, row):
    """bf16 / fp16 (norms, softcaps, softmax in float32) meet the conformance rows on the
    combined cases, prefill on both kernels and decode."""
    config, params, tokens = example(case)
    ref = impl_numpy.forward(config, params, tokens)
    for attn_impl in ATTN_IMPLS:
        model = build(config, params, dtype, attn_impl)
        with torch.no_grad():
            for what, out in [("prefill", model(tokens)), ("decode", model.decode(tokens, 4))]:
                assert out.dtype == dtype
                assert_close(numpy64(out), ref, row, f"{case.id} {dtype} {attn_impl} {what}")
