"""What tells each preset apart: the facts of its published config that matter (window, theta,
vocabulary, biases, norms), checked on the real size (never allocated, never run), and the
`tiny()` shrink keeping the ones that only act at some size (tests/test_presets.py: counts,
registration, tiny() in general)."""

from __future__ import annotations

import dataclasses

import pytest

from lmref.spec import ModelConfig, get_preset, layer_plan, param_shapes, tiny

def test_gpt2_facts():
    c = get_preset("gpt2")
    assert c.position == "learned"
    assert c.activation == "gelu_tanh" and c.mlp == "plain"
    assert c.tie_embeddings
    assert c.qkv_bias and c.attn_out_bias and c.mlp_bias and c.norm_bias
    assert c.norm == "layernorm" and c.norm_eps == 1e-5
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.max_seq_len) == (50257, 768, 12, 12, 1024)
    shapes = param_shapes(c)
    assert shapes["embed.positions"] == (1024, 768)
    assert "lm_head.weight" not in shapes


def test_llama1_facts():
    c = get_preset("llama1")
    assert c.max_seq_len == 2048
    assert c.norm_eps == 1e-6
    assert c.rope_theta == 10_000.0 and c.rope_scaling is None
    assert c.n_kv_heads == c.n_heads == 32
    assert c.vocab_size == 32000


def test_llama2_facts():
    c = get_preset("llama2")
    assert c.max_seq_len == 4096
    assert c.norm_eps == 1e-5
    # llama1 and llama2 differ only in the context and the eps
    differ = {f.name for f in dataclasses.fields(ModelConfig)
              if getattr(c, f.name) != getattr(get_preset("llama1"), f.name)}
    assert differ == {"name", "max_seq_len", "norm_eps"}


def test_llama2_70b_is_gqa():
    c = get_preset("llama2-70b")
    assert (c.n_heads, c.n_kv_heads, c.d_model, c.n_layers, c.d_ff) == (64, 8, 8192, 80, 28672)


def test_llama3_facts():
    c = get_preset("llama3")
    assert c.rope_theta == 500_000.0
    assert c.n_kv_heads == 8 and c.n_heads == 32
    assert c.vocab_size == 128256
    assert c.max_seq_len == 8192
    assert c.rope_scaling is None


def test_llama31_facts():
    c = get_preset("llama3.1")
    assert c.max_seq_len == 131072
    s = c.rope_scaling
    assert s is not None and s.kind == "llama3"
    assert (s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_seq_len) == (8.0, 1.0, 4.0, 8192)
    # everything else is llama3
    differ = {f.name for f in dataclasses.fields(ModelConfig)
              if getattr(c, f.name) != getattr(get_preset("llama3"), f.name)}
    assert differ == {"name", "max_seq_len", "rope_scaling"}


@pytest.mark.parametrize("name", ["llama1", "llama2", "llama2-70b", "llama3", "llama3.1"])
def test_llama_family_common_facts(name):
    c = get_preset(name)
    assert c.norm == "rmsnorm" and c.norm_weight and not c.norm_bias
    assert c.mlp == "gated" and c.activation == "silu"
    assert c.position == "rope" and c.rope_layout == "halves" and c.rope_fraction == 1.0
    assert not (c.qkv_bias or c.attn_out_bias or c.mlp_bias or c.lm_head_bias or c.tie_embeddings)


def test_olmo_facts():
    c = get_preset("olmo")
    assert c.norm == "layernorm" and not c.norm_weight and not c.norm_bias
    assert c.tie_embeddings
    assert c.position == "rope" and c.rope_theta == 10_000.0
    assert not any("norm" in name for name in param_shapes(c))


def test_olmo_alibi_facts():
    c = get_preset("olmo-alibi")
    assert c.position == "alibi" and c.alibi_slopes == "geometric"  # olmo/model.py alibi_attention_bias
    assert c.norm_weight and c.norm_bias
    assert c.tie_embeddings
    differ = {f.name for f in dataclasses.fields(ModelConfig)
              if getattr(c, f.name) != getattr(get_preset("olmo"), f.name)}
    assert differ == {"name", "hf_model_type", "position", "alibi_slopes", "norm_weight", "norm_bias"}
    assert c.hf_model_type is None  # transformers' OLMo has no ALiBi


def test_mpt_facts():
    c = get_preset("mpt")
    assert c.position == "alibi" and c.alibi_max_bias == 8.0
    assert c.norm == "layernorm" and c.norm_weight and not c.norm_bias
    assert c.mlp == "plain" and c.activation == "gelu" and c.d_ff == 4 * c.d_model
    assert not (c.qkv_bias or c.attn_out_bias or c.mlp_bias or c.lm_head_bias)
    assert c.tie_embeddings
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.max_seq_len) == (50432, 4096, 32, 32, 32, 2048)


def test_mistral_v01_facts():
    c = get_preset("mistral-7b")
    assert [layer.mask.window for layer in layer_plan(c)] == [4096] * 32  # the window on every layer
    assert (c.rope_theta, c.vocab_size, c.max_seq_len, c.norm_eps) == (10_000.0, 32000, 32768, 1e-5)
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff) == (32, 8, 128, 14336)


def test_mistral_versions_differ_in_window_theta_and_vocab():
    """Told apart as LLaMA 1/2/3 are: by the numbers that matter."""
    v1, v3 = get_preset("mistral-7b"), get_preset("mistral-7b-v0.3")
    differ = {f.name for f in dataclasses.fields(ModelConfig) if getattr(v1, f.name) != getattr(v3, f.name)}
    assert differ == {"name", "vocab_size", "rope_theta", "attn_pattern", "sliding_window"}
    assert (v3.rope_theta, v3.vocab_size, v3.sliding_window, v3.attn_pattern) == (1e6, 32768, None, ("global",))


@pytest.mark.parametrize("name", ["mistral-7b", "mistral-7b-v0.3"])
def test_mistral_has_no_bias_and_llamas_block(name):
    c = get_preset(name)
    assert c.norm == "rmsnorm" and c.mlp == "gated" and c.activation == "silu" and c.rope_layout == "halves"
    assert not (c.qkv_bias or c.attn_out_bias or c.mlp_bias or c.lm_head_bias or c.tie_embeddings)


def test_tiny_mistral_window_is_shorter_than_every_case():
    assert tiny("mistral-7b").sliding_window == 5 and tiny("mistral-7b").attn_pattern == ("sliding",)




# --- Qwen 2, 2.5, 3 ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2-7b", "qwen2.5-7b"])
def test_qwen2_facts(name):
    c = get_preset(name)
    assert c.qkv_bias and not c.attn_out_bias and not c.mlp_bias  # q, k, v biases only
    assert (c.rope_theta, c.norm_eps, c.vocab_size, c.max_seq_len) == (1e6, 1e-6, 152064, 131072)
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.d_model, c.d_ff) == (28, 4, 128, 3584, 18944)
    assert not c.tie_embeddings  # the 7B configs: tie_word_embeddings false
    assert c.attn_pattern == ("global",) and c.sliding_window is None  # use_sliding_window false


def test_qwen2_and_qwen25_7b_share_the_architecture():
    """Qwen2.5's report keeps Qwen2's architecture; the 7B configs agree in every number."""
    a, b = get_preset("qwen2-7b"), get_preset("qwen2.5-7b")
    assert {f.name for f in dataclasses.fields(ModelConfig) if getattr(a, f.name) != getattr(b, f.name)} == {"name"}


def test_qwen3_facts():
    c = get_preset("qwen3-8b")
    assert c.qk_norm == "per_head" and not (c.qkv_bias or c.attn_out_bias)
    assert param_shapes(c)["layers.0.attn.q_norm.weight"] == (128,) == param_shapes(c)["layers.0.attn.k_norm.weight"]
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.d_model, c.n_layers) == (32, 8, 128, 4096, 36)
    assert (c.rope_theta, c.max_seq_len, c.vocab_size) == (1e6, 40960, 151936)


# --- Gemma 1, 2, 3 ----------------------------------------------------------------------------

GEMMAS = ["gemma-2b", "gemma-7b", "gemma2-9b", "gemma2-27b", "gemma3-4b", "gemma3-27b"]


@pytest.mark.parametrize("name", GEMMAS)
def test_every_gemma_scales_embeddings_offsets_norms_and_ties_the_head(name):
    c = get_preset(name)
    assert c.embedding_scale == "sqrt_d_model" and c.norm_unit_offset and c.tie_embeddings
    assert c.norm == "rmsnorm" and c.norm_eps == 1e-6
    assert c.mlp == "gated" and c.activation == "gelu_tanh"  # GeGLU with the tanh GELU
    assert not (c.qkv_bias or c.attn_out_bias or c.mlp_bias)
    assert "lm_head.weight" not in param_shapes(c)


def test_gemma1_facts():
    small, big = get_preset("gemma-2b"), get_preset("gemma-7b")
    assert (small.n_heads, small.n_kv_heads, small.head_dim) == (8, 1, 256)  # MQA
    assert (big.n_heads, big.n_kv_heads, big.head_dim, big.d_model) == (16, 16, 256, 3072)  # q dim 4096 != d
    for c in (small, big):
        assert c.norm_placement == "pre" and c.attn_pattern == ("global",) and c.attn_softcap is None


@pytest.mark.parametrize("name, query_scale_dim, head_dim", [("gemma2-9b", None, 256), ("gemma2-27b", 144, 128)])
def test_gemma2_facts(name, query_scale_dim, head_dim):
    """query_pre_attn_scalar: 256 for 9B, its head_dim (the plain scale, no knob to set); 144
    = d_model / n_heads for 27B, whose head_dim is 128."""
    c = get_preset(name)
    assert (c.query_scale_dim, c.head_dim) == (query_scale_dim, head_dim)
    assert c.attn_scale == {"gemma2-9b": 256, "gemma2-27b": 144}[name] ** -0.5
    assert c.attn_softcap == 50.0 and c.final_logit_softcap == 30.0
    assert c.norm_placement == "sandwich"
    # the even layers slide (Gemma2Config: layer i sliding iff (i + 1) % 2), 4096 keys
    assert [layer.mask.window for layer in layer_plan(c)[:4]] == [4096, None, 4096, None]


def test_gemma3_facts():
    c = get_preset("gemma3-4b")
    plan = layer_plan(c)
    assert [layer.mask.kind for layer in plan[:6]] == ["sliding"] * 5 + ["causal"] and plan[5].mask.window is None
    assert {layer.mask.window for layer in plan if layer.mask.kind == "sliding"} == {1024}
    local, full = plan[0].rope, plan[5].rope
    assert (local.theta, local.scaling) == (10_000.0, None)
    assert full.theta == 1e6 and (full.scaling.kind, full.scaling.factor) == ("linear", 8.0)
    assert c.qk_norm == "per_head" and c.norm_placement == "sandwich"
    assert c.attn_softcap is None and c.final_logit_softcap is None  # QK norm replaces the softcaps
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads) == (262208, 2560, 34, 8, 4)


def test_gemma3_27b_scales_scores_by_d_model_over_heads_without_a_softcap():
    c, small = get_preset("gemma3-27b"), get_preset("gemma3-4b")
    assert (c.query_scale_dim, c.head_dim, c.d_model // c.n_heads) == (168, 128, 168)
    assert c.attn_softcap is None and c.final_logit_softcap is None
    assert [layer.mask for layer in layer_plan(c)] == [layer.mask for layer in layer_plan(small)][:6] * 10 + \
        [layer.mask for layer in layer_plan(small)][:2]  # 62 layers: ten periods of 5 sliding + 1 global, then 2


# --- OLMo 2 -------------------------------------------------------------------------------------


def test_olmo2_facts():
    c = get_preset("olmo2-7b")
    assert c.norm_placement == "post_sublayer" and c.qk_norm == "per_projection"
    shapes = param_shapes(c)
    assert shapes["layers.0.attn.q_norm.weight"] == (4096,) and "layers.0.attn_norm.weight" not in shapes
    assert {"layers.0.attn_post_norm.weight", "layers.0.mlp_post_norm.weight"} <= set(shapes)
    assert (c.norm, c.norm_eps, c.rope_theta, c.vocab_size, c.max_seq_len) == ("rmsnorm", 1e-6, 5e5, 100352, 4096)
    assert not (c.qkv_bias or c.tie_embeddings)


# --- tiny() of the new families ----------------------------------------------------------------


def test_tiny_gemma3_keeps_one_period_of_five_sliding_and_one_global_layer():
    c = tiny("gemma3-4b")
    assert c.n_layers == 6 and c.layer_attn_kinds == ("sliding",) * 5 + ("global",)
    assert (c.sliding_window, c.rope_theta_local, c.rope_scaling) == (5, 10_000.0, get_preset("gemma3-4b").rope_scaling)


@pytest.mark.parametrize("name", ["gemma-7b", "gemma2-9b", "gemma2-27b", "gemma3-4b"])
def test_tiny_keeps_head_dim_apart_from_d_model_over_heads(name):
    """These presets have d_model != n_heads * head_dim; so do their tiny configs, in the same
    ratio, or a port that derives head_dim = d_model / n_heads would pass them."""
    base, small = get_preset(name), tiny(name)
    assert small.d_model != small.q_dim
    assert small.d_model / small.q_dim == pytest.approx(base.d_model / base.q_dim)


def test_tiny_gemma2_27b_keeps_a_query_scale_apart_from_head_dim():
    assert (tiny("gemma2-27b").query_scale_dim, tiny("gemma2-27b").head_dim) == (18, 16)  # 144 / 128 = 18 / 16


@pytest.mark.parametrize("name, d_model, n_layers, n_heads", [
    ("bloom-560m", 1024, 24, 16), ("bloom-7b1", 4096, 30, 32), ("bloom-176b", 14336, 70, 112)])
def test_bloom_facts(name, d_model, n_layers, n_heads):
    c = get_preset(name)
    assert (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.d_ff) == (d_model, n_layers, n_heads, n_heads, 4 * d_model)
    assert (c.vocab_size, c.max_seq_len, c.position, c.alibi_max_bias) == (250880, 2048, "alibi", 8.0)
    assert c.embedding_norm and c.embedding_scale == "none" and c.tie_embeddings and not c.lm_head_bias
    assert c.norm == "layernorm" and c.norm_bias and c.norm_eps == 1e-5 and c.norm_placement == "pre"
    assert c.qkv_bias and c.attn_out_bias and c.mlp_bias and not c.parallel_residual
    assert c.activation == "gelu_tanh_truncated" and c.mlp == "plain"
    shapes = param_shapes(c)
    assert shapes["embed.norm.weight"] == shapes["embed.norm.bias"] == (d_model,)
    assert "lm_head.weight" not in shapes and "embed.positions" not in shapes
    assert tiny(name).embedding_norm  # the tiny model keeps the knob


def test_bloom_176b_heads_take_the_interleaved_alibi_slopes():
    """112 heads, not a power of two: 64 slopes of 64 heads, then 48 odd ones of 128 (Press et al.)."""
    from lmref.impl_numpy.alibi import alibi_slopes

    slopes = alibi_slopes(get_preset("bloom-176b").n_heads)
    assert len(slopes) == 112 and slopes[0] == 2.0**-0.125 and slopes[63] == 2.0**-8
    assert list(slopes[64:]) == [2.0 ** (-8 * h / 128) for h in range(1, 96, 2)]
# --- PaLM ---------------------------------------------------------------------------------------

PALM_TABLE_1 = {  # Chowdhery et al. 2022, Table 1: layers, heads, d_model, parameters in billions
    "palm-8b": (32, 16, 4096, 8.63), "palm-62b": (64, 32, 8192, 62.50), "palm-540b": (118, 48, 18432, 540.35),
}


@pytest.mark.parametrize("name", sorted(PALM_TABLE_1))
def test_palm_facts(name):
    c = get_preset(name)
    layers, heads, d_model, _ = PALM_TABLE_1[name]
    assert (c.n_layers, c.n_heads, c.d_model) == (layers, heads, d_model)
    assert (c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size, c.max_seq_len) == (1, 256, 4 * d_model, 256_000, 2048)
    assert c.parallel_residual and c.shared_attn_norm and c.tie_embeddings
    assert (c.mlp, c.activation, c.norm, c.norm_eps) == ("gated", "silu", "layernorm", 1e-6)
    assert not (c.qkv_bias or c.attn_out_bias or c.mlp_bias or c.norm_bias or c.lm_head_bias)
    assert (c.position, c.rope_layout, c.rope_fraction, c.rope_theta) == ("rope", "halves", 1.0, 10_000.0)
    assert c.logit_scale == d_model**-0.5 and c.logit_z_loss_coef == 1e-4
    assert c.hf_model_type is None


def test_palm_counts_are_table_1s():
    """8B and 62B round to Table 1's figures; 540B rounds to 540.36B with its 119 LayerNorm
    scales and to Table 1's 540.35B without them (spec/presets/palm.py)."""
    from lmref.spec import param_count

    for name, (layers, _, d_model, billions) in PALM_TABLE_1.items():
        count = param_count(get_preset(name))
        scales = (layers + 1) * d_model
        if name == "palm-540b":
            assert (round(count / 1e9, 2), round((count - scales) / 1e9, 2)) == (540.36, billions)
        else:
            assert round(count / 1e9, 2) == round((count - scales) / 1e9, 2) == billions


def test_tiny_palm_scales_its_logits_by_its_own_d_model():
    for name in PALM_TABLE_1:
        c = tiny(name)
        assert c.logit_scale == pytest.approx(c.d_model**-0.5, rel=1e-12)
    assert tiny("palm-540b").d_model != tiny("palm-540b").q_dim  # 18432 against 48 x 256 at full size
