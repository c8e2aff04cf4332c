"""Independent checks of the golden's whole model (impl_numpy/) against a naive loop-by-loop
model, GQA as repeated KV heads, causality, batch independence, decoding as a prefill of each
prefix, the loss as the direct cross entropy, the capture names and the tied head.

Facts: spec/MATH.md.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.special import logsumexp

from lmref.impl_numpy import KVCache, decode, forward, loss
from lmref.spec.captures import capture_names
from lmref.impl_numpy.norms import apply_norm
from lmref.spec import PRESETS, ModelConfig, RopeScaling, init_params, param_shapes, tiny
from tests.naive_model import naive_forward


TINY = sorted(PRESETS)


def rng(seed: int = 0) -> np.random.Generator:
    # test inputs only (the weights come from init_params); values need not be stable
    return np.random.default_rng(seed)


def tokens_for(config: ModelConfig, batch: int, seq: int, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, config.vocab_size, size=(batch, seq))


VARIANTS = {f"tiny-{n}": tiny(n) for n in TINY} | {
    "interleaved-partial": tiny("llama1", rope_layout="interleaved", rope_fraction=0.5),
    "neox-partial-biases": tiny("gpt2", position="rope", rope_fraction=0.25, lm_head_bias=True,
                                tie_embeddings=False),
    "alibi-6-heads-mqa": tiny("olmo-alibi", n_heads=6, n_kv_heads=1, d_model=96, qkv_clip=0.5),
    "linear-scaling-gelu-geglu": tiny("llama3", rope_scaling=RopeScaling(kind="linear", factor=3.0),
                                      activation="gelu", mlp_bias=True),
    "relu-plain-odd": tiny("gpt2", activation="relu", n_heads=5, n_kv_heads=5, d_model=80, d_ff=104),
    # BLOOM's embedding norm before a scale and learned positions (the order of spec/MATH.md, "Block")
    "embedding-norm-scaled-learned-rmsnorm": tiny("gpt2", embedding_norm=True, embedding_scale="sqrt_d_model",
                                                  norm="rmsnorm", norm_bias=False, activation="gelu_tanh_truncated"),
    # LongRoPE past its original context (8 tokens > O = 4): the long factors, the attention factor
    "longrope-past-its-context": tiny("phi-3-mini-128k", rope_scaling=dataclasses.replace(
        tiny("phi-3-mini-128k").rope_scaling, original_max_seq_len=4)),
    "logit-scale-before-softcap": tiny("gemma2-9b", logit_scale=4.0),  # 4x the logits: the softcap bends them
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_forward_matches_a_naive_loop_implementation(name):
    c = VARIANTS[name]
    p = init_params(c, 11)
    tokens = tokens_for(c, 2, 8, seed=1)  # longer than tiny()'s windows (5) and chunks (4)
    got = forward(c, p, tokens)
    expected = naive_forward(c, p, tokens)
    assert got.shape == (2, 8, c.vocab_size)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-10)


def test_naive_model_detects_a_wrong_scale(monkeypatch):
    # the comparison above is sensitive: the golden with the 1/sqrt(head_dim) dropped disagrees
    import lmref.impl_numpy.attention as attention_module

    c = tiny("llama3")
    p = init_params(c, 11)
    tokens = tokens_for(c, 1, 5, seed=1)
    ok = naive_forward(c, p, tokens)
    orig = attention_module.attention_scores
    monkeypatch.setattr(attention_module, "attention_scores",
                        lambda config, plan, q, k, qp, kp: orig(config, plan, q, k, qp, kp) / config.attn_scale)
    assert not np.allclose(forward(c, p, tokens), ok, rtol=1e-6, atol=1e-6)


# --- attention and model properties ----------------------------------------------------------


def _expand_kv_weights(gqa: ModelConfig, params: dict, mapping) -> dict:
    """MHA params whose kv head h is the GQA kv head mapping(h)."""
    hd = gqa.head_dim
    out = dict(params)
    for i in range(gqa.n_layers):
        for w in ("wk", "wv"):
            src = params[f"layers.{i}.attn.{w}"]
            cols = [src[:, mapping(h) * hd:(mapping(h) + 1) * hd] for h in range(gqa.n_heads)]
            out[f"layers.{i}.attn.{w}"] = np.concatenate(cols, axis=1)
    return out


@pytest.mark.parametrize("name,changes", [("llama3", {}), ("llama2-70b", {}),
                                          ("llama1", dict(n_kv_heads=1))])  # GQA 4, GQA 4, MQA
def test_gqa_equals_mha_with_repeated_kv_weights(name, changes):
    gqa = tiny(name, **changes)
    assert gqa.n_kv_heads < gqa.n_heads
    mha = dataclasses.replace(gqa, n_kv_heads=gqa.n_heads)
    p = init_params(gqa, 2)
    tokens = tokens_for(gqa, 2, 6, seed=2)
    expected = forward(gqa, p, tokens)
    group = gqa.kv_group_size
    right = _expand_kv_weights(gqa, p, lambda h: h // group)  # contiguous groups (HF repeat_kv)
    np.testing.assert_allclose(forward(mha, right, tokens), expected, rtol=1e-12, atol=1e-12)
    if gqa.n_kv_heads > 1:  # the other grouping (h % n_kv) is a different model
        wrong = _expand_kv_weights(gqa, p, lambda h: h % gqa.n_kv_heads)
        assert not np.allclose(forward(mha, wrong, tokens), expected, atol=1e-6)


def test_interleaved_model_equals_halves_model_with_permuted_weights():
    # Meta -> HF LLaMA conversion: permuting the q/k columns of each head turns interleaved
    # pairs into rotate-half pairs without changing the model
    inter = tiny("llama3", rope_layout="interleaved")
    halves = dataclasses.replace(inter, rope_layout="halves")
    hd = inter.head_dim
    perm = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
    p = init_params(inter, 3)
    q = dict(p)
    for i in range(inter.n_layers):
        for w, heads in (("wq", inter.n_heads), ("wk", inter.n_kv_heads)):
            cols = np.concatenate([h * hd + perm for h in range(heads)])
            q[f"layers.{i}.attn.{w}"] = p[f"layers.{i}.attn.{w}"][:, cols]
    tokens = tokens_for(inter, 2, 7, seed=3)
    expected = forward(inter, p, tokens)
    np.testing.assert_allclose(forward(halves, q, tokens), expected, rtol=1e-11, atol=1e-11)
    assert not np.allclose(forward(halves, p, tokens), expected, atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_causality(name):
    c = tiny(name)
    p = init_params(c, 4)
    tokens = tokens_for(c, 1, 8, seed=4)
    changed = tokens.copy()
    changed[0, 5] = (changed[0, 5] + 1) % c.vocab_size
    a, b = forward(c, p, tokens), forward(c, p, changed)
    # equal up to rounding: a MoE layer groups each expert's tokens into one matmul, and
    # position 5 joining or leaving a group may change the kernel's summation order
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=0, atol=1e-12)
    assert np.all(np.abs(a[:, 5:] - b[:, 5:]).max(axis=-1) > 1e-6)


@pytest.mark.parametrize("name", TINY)
def test_batch_rows_are_independent(name):
    c = tiny(name)
    p = init_params(c, 5)
    tokens = tokens_for(c, 3, 6, seed=5)
    together = forward(c, p, tokens)
    for b in range(3):
        np.testing.assert_allclose(forward(c, p, tokens[b:b + 1])[0], together[b], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prompt_len", [1, 4, 9])
@pytest.mark.parametrize("name", TINY)
def test_decode_equals_forward(name, prompt_len):
    c = tiny(name)
    p = init_params(c, 6)
    tokens = tokens_for(c, 2, 9, seed=6)
    np.testing.assert_allclose(decode(c, p, tokens, prompt_len), forward(c, p, tokens), rtol=1e-10, atol=1e-11)


def test_decode_with_an_explicit_cache_at_late_positions():
    c = tiny("olmo-alibi")  # ALiBi: query and key positions must line up through the cache
    p = init_params(c, 7)
    tokens = tokens_for(c, 1, 12, seed=7)
    full = forward(c, p, tokens)
    cache = KVCache.empty(c)
    parts = [forward(c, p, tokens[:, :5], cache=cache), forward(c, p, tokens[:, 5:9], cache=cache),
             forward(c, p, tokens[:, 9:], cache=cache)]
    assert cache.length == 12
    assert cache.keys[1].shape == (1, 12, c.n_kv_heads, c.head_dim)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-10, atol=1e-11)


def test_decode_rejects_a_bad_prompt_len():
    c = tiny("llama3")
    p = init_params(c, 0)
    with pytest.raises(ValueError, match=r"prompt_len must be in \[1, 4\], got 0"):
        decode(c, p, tokens_for(c, 1, 4), 0)
    with pytest.raises(ValueError, match=r"prompt_len must be in \[1, 4\], got 5"):
        decode(c, p, tokens_for(c, 1, 4), 5)


@pytest.mark.parametrize("name", ["gpt2", "llama3", "olmo-alibi"])
def test_loss_is_the_direct_cross_entropy(name):
    c = tiny(name)
    p = init_params(c, 8)
    tokens = tokens_for(c, 3, 7, seed=8)
    logits = forward(c, p, tokens)
    terms = [logsumexp(logits[b, t]) - logits[b, t, tokens[b, t + 1]]
             for b in range(3) for t in range(6)]
    assert loss(c, p, tokens) == pytest.approx(math.fsum(terms) / len(terms), rel=1e-12)
    assert isinstance(loss(c, p, tokens), float)


@pytest.mark.parametrize("name", ["palm-8b", "palm-540b"])
def test_the_logit_z_loss_adds_its_weight_times_the_mean_squared_log_normaliser(name):
    """PaLM section 5: loss = ce + coef * log^2 Z, per target and averaged like the cross-entropy
    (t5x losses.py): with and without the weight, the losses differ by exactly coef times the
    mean of logsumexp(logits_t)^2 over the B * (S - 1) rows that have a target (scipy's
    logsumexp; the last position, which has none, is left out)."""
    c = tiny(name)
    p = init_params(c, 8)
    tokens = tokens_for(c, 3, 7, seed=8)
    logits = forward(c, p, tokens)
    squares = [logsumexp(logits[b, t]) ** 2 for b in range(3) for t in range(6)]
    z_loss = math.fsum(squares) / len(squares)
    without = loss(dataclasses.replace(c, logit_z_loss_coef=0.0), p, tokens)
    assert c.logit_z_loss_coef == 1e-4 and z_loss > 1.0  # log Z near log(251): the term is visible
    assert loss(c, p, tokens) - without == pytest.approx(1e-4 * z_loss, rel=1e-9)
    assert loss(dataclasses.replace(c, logit_z_loss_coef=0.5), p, tokens) - without == pytest.approx(
        0.5 * z_loss, rel=1e-12)
    every_row = math.fsum(logsumexp(logits[b, t]) ** 2 for b in range(3) for t in range(7)) / 21
    assert abs(every_row - z_loss) > 1e-6 * z_loss  # the rows counted matter


def test_loss_needs_two_tokens():
    c = tiny("llama3")
    with pytest.raises(ValueError, match="at least 2 tokens"):
        loss(c, init_params(c, 0), tokens_for(c, 1, 1))


def test_uniform_logits_give_log_vocab_loss():
    c = tiny("llama3")
    p = init_params(c, 0)
    p["lm_head.weight"] = np.zeros_like(p["lm_head.weight"])
    assert loss(c, p, tokens_for(c, 2, 5)) == pytest.approx(math.log(c.vocab_size), rel=1e-14)


@pytest.mark.parametrize("name", TINY)
def test_capture_names_order_and_shapes(name):
    c = tiny(name)
    p = init_params(c, 9)
    tokens = tokens_for(c, 2, 5, seed=9)
    captured: dict = {}
    logits = forward(c, p, tokens, capture=captured)
    names = capture_names(c)
    parts = {"dense": ("attn", "mlp", "out"), "moe": ("attn", "router", "mlp", "out")}
    assert names == ["embed", *(f"layers.{i}.{part}" for i, kind in enumerate(c.layer_mlp_kinds)
                                for part in parts[kind]), "final_norm", "logits"]
    assert list(captured) == names
    for n in names[:-1]:
        assert captured[n].shape == ((2, 5, c.moe.n_experts) if n.endswith(".router") else (2, 5, c.d_model)), n
    assert captured["logits"].shape == (2, 5, c.vocab_size)
    np.testing.assert_array_equal(captured["logits"], logits)
    # the residual stream: out_i = out_{i-1} + attn_i + mlp_i
    prev = captured["embed"]
    for i in range(c.n_layers):
        np.testing.assert_allclose(captured[f"layers.{i}.out"],
                                   prev + captured[f"layers.{i}.attn"] + captured[f"layers.{i}.mlp"],
                                   rtol=1e-13, atol=1e-13)
        prev = captured[f"layers.{i}.out"]
    np.testing.assert_allclose(captured["final_norm"], apply_norm(c, p, "final_norm", prev), rtol=1e-14)
    expected_embed = p["embed.tokens"][tokens]
    if c.embedding_norm:  # BLOOM: the norm right after the lookup
        expected_embed = apply_norm(c, p, "embed.norm", expected_embed)
    if c.embedding_scale == "sqrt_d_model":  # Gemma
        expected_embed = expected_embed * math.sqrt(c.d_model)
    if c.position == "learned":
        expected_embed = expected_embed + p["embed.positions"][:5]
    np.testing.assert_array_equal(captured["embed"], expected_embed)


@pytest.mark.parametrize("name", ["gpt2", "olmo", "olmo-alibi"])
def test_tied_head_uses_the_token_embedding(name):
    c = tiny(name)
    assert c.tie_embeddings and "lm_head.weight" not in param_shapes(c)
    p = init_params(c, 10)
    tokens = tokens_for(c, 1, 4, seed=10)
    captured: dict = {}
    logits = forward(c, p, tokens, capture=captured)
    np.testing.assert_allclose(logits, captured["final_norm"] @ p["embed.tokens"].T, rtol=1e-13, atol=1e-13)
    # changing a row of the embedding that no input uses still changes that logit column
    # (by a random vector: OLMo's final LayerNorm output is orthogonal to a constant one)
    unused = next(t for t in range(c.vocab_size) if t not in tokens)
    q = dict(p)
    q["embed.tokens"] = p["embed.tokens"].copy()
    q["embed.tokens"][unused] += rng(10).normal(size=c.d_model)
    other = forward(c, q, tokens)
    assert np.all(np.abs(other[..., unused] - logits[..., unused]) > 1e-6)
    keep = np.arange(c.vocab_size) != unused
    np.testing.assert_allclose(other[..., keep], logits[..., keep], rtol=1e-13, atol=1e-13)


def test_untied_head_uses_lm_head():
    c = tiny("llama3")
    p = init_params(c, 10)
    tokens = tokens_for(c, 1, 4, seed=10)
    captured: dict = {}
    logits = forward(c, p, tokens, capture=captured)
    np.testing.assert_allclose(logits, captured["final_norm"] @ p["lm_head.weight"], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", TINY)
def test_float32_params_stay_float32_and_close(name):
    # impl_numpy/__init__.py: "the functions keep whatever float dtype the params have (the
    # tests use that to build a float32 positive control)".  Every captured intermediate must
    # then be float32, and close to the float64 golden.
    c = tiny(name)
    p = init_params(c, 0)
    tokens = tokens_for(c, 1, 6)
    ref = forward(c, p, tokens)
    captured: dict = {}
    low = forward(c, {k: v.astype(np.float32) for k, v in p.items()}, tokens, capture=captured)
    assert {k: str(v.dtype) for k, v in captured.items()} == {k: "float32" for k in captured}
    np.testing.assert_allclose(low, ref, rtol=1e-3, atol=1e-3)
    assert not np.array_equal(low.astype(np.float64), ref)
