"""The configs the Hugging Face converter tests run: every convertible preset's golden-case
config, variants that switch on what the presets leave off, and configs in the RoPE layout
their type does not rotate (exported with their q, k columns permuted, so they come back in
the other layout: the same model, compared by its logits rather than by equality).

tests/test_hf_convert.py round-trips them without transformers; tests/test_hf_float64.py runs
their exports in transformers.  `tokens_for` gives the tokens a float32 run of one of them
takes: a mixture of experts needs tokens whose expert choices float32 cannot flip.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from lmref.conformance.cases import CaseSpec, case_config, routed_tokens
from lmref.spec import PRESETS, RopeScaling, tiny

SUPPORTED_ARCHS = [name for name, config in PRESETS.items() if config.hf_model_type is not None]
LINEAR_2 = RopeScaling(kind="linear", factor=2.0)

VARIANTS = {
    "llama3-tied-biases": tiny("llama3", tie_embeddings=True, qkv_bias=True, attn_out_bias=True, mlp_bias=True),
    "llama2-linear-rope": tiny("llama2", rope_scaling=LINEAR_2),
    "olmo-untied-clip-bias": tiny("olmo", tie_embeddings=False, qkv_clip=0.5, qkv_bias=True, attn_out_bias=True),
    "mpt-untied-clip": tiny("mpt", tie_embeddings=False, qkv_clip=0.3),
    "mpt-softmax-scale-0.125": tiny("mpt", query_scale_dim=64),  # attn_config.softmax_scale = 64^-0.5
    # head_dim apart from d_model / n_heads: a key OlmoConfig and Phi3Config lack, read by their attention
    "olmo-head_dim-24": tiny("olmo", head_dim=24),
    "phi3-head_dim-24": tiny("phi-3-mini-4k", head_dim=24),
    "gpt2-untied-exact-gelu": tiny("gpt2", tie_embeddings=False, activation="gelu"),
    "mistral-tied-linear-rope": tiny("mistral-7b", tie_embeddings=True, rope_scaling=LINEAR_2),
    # Qwen's own rule: layers from max_window_layers on slide
    "qwen2-window-from-layer-1": tiny("qwen2-7b", attn_pattern=("global", "sliding"), sliding_window=4),
    "qwen2.5-tied-linear-rope": tiny("qwen2.5-7b", tie_embeddings=True, rope_scaling=LINEAR_2),
    # attention_bias: q, k, v and o; head_dim apart from d_model / n_heads
    "qwen3-biases-sliding-head_dim-24": tiny("qwen3-8b", qkv_bias=True, attn_out_bias=True, attn_pattern=("sliding",),
                                             sliding_window=4, head_dim=24),
    "olmo2-gqa-biases-tied": tiny("olmo2-7b", n_kv_heads=2, qkv_bias=True, attn_out_bias=True, tie_embeddings=True),
    "olmo2-head_dim-24": tiny("olmo2-7b", head_dim=24),
    "gemma-silu-biases-untied-linear-rope": tiny("gemma-2b", activation="silu", qkv_bias=True, attn_out_bias=True,
                                                 tie_embeddings=False, rope_scaling=LINEAR_2),
    "gemma2-exact-gelu-global-first-no-caps": tiny("gemma2-9b", activation="gelu", attn_pattern=("global", "sliding"),
                                                   attn_softcap=None, final_logit_softcap=None),
    "gemma2-no-sliding-layer": tiny("gemma2-27b", attn_pattern=("global",), sliding_window=None),
    "gemma3-final-softcap-llama3-rope": tiny("gemma3-4b", final_logit_softcap=3.0, rope_scaling=RopeScaling(
        kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=32)),
    "gemma3-no-sliding-layer": tiny("gemma3-4b", attn_pattern=("global",), sliding_window=None, rope_theta_local=None),
    # GPT-NeoX: use_parallel_residual false, a tied head, theta 5e4 scaled; head_dim 15 rotating 6 dims
    # (an odd 9 passing through), no attention_bias, tanh GELU, llama3 scaling of the rotated dims
    "pythia-sequential-tied-linear-rope": tiny("pythia-160m", parallel_residual=False, tie_embeddings=True,
                                               rope_theta=50_000.0, rope_scaling=LINEAR_2),
    "pythia-head_dim-15-rotating-6-no-attn-bias-llama3-rope": tiny(
        "pythia-160m", d_model=60, head_dim=15, rope_fraction=0.4, qkv_bias=False, attn_out_bias=False,
        activation="gelu_tanh", rope_scaling=RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0,
                                                         high_freq_factor=4.0, original_max_seq_len=32)),
    # GPT-J: the whole head rotating (rotary_dim = head_dim), exact GELU, the tied head (its bias stays)
    "gptj-whole-head-rope-exact-gelu-tied": tiny("gptj-6b", rope_fraction=1.0, activation="gelu", tie_embeddings=True),
    "gptj-half-head-rope-narrow-mlp": tiny("gptj-6b", rope_fraction=0.5, d_ff=100),
    # Phi: GQA, a tied head (its bias stays), theta 5e4 scaled; head_dim 9 rotating int(9 * 0.5) = 4
    # dims (an odd 5 passing through), exact GELU, llama3 scaling of the rotated dims
    "phi-gqa-tied-linear-rope": tiny("phi-2", n_kv_heads=2, tie_embeddings=True, rope_theta=50_000.0,
                                     rope_scaling=LINEAR_2),
    "phi-head_dim-9-rotating-4-exact-gelu-llama3-rope": tiny(
        "phi-1.5", d_model=36, head_dim=9, activation="gelu", rope_scaling=RopeScaling(
            kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=32)),
    # Falcon: the sequential layer (parallel_attn false) with multi-query, biases (bias: q|k|v, dense,
    # MLP), an untied head, scaled RoPE; the old architecture without multi_query (per head q, k, v),
    # tanh GELU, a narrow MLP; the new one with one norm (num_ln_in_parallel_attn 1), theta 5e4
    "falcon-sequential-multi-query-biases-untied-linear-rope": tiny(
        "falcon-7b", parallel_residual=False, shared_attn_norm=False, qkv_bias=True, attn_out_bias=True,
        mlp_bias=True, tie_embeddings=False, rope_scaling=LINEAR_2),
    "falcon-multi-head-tanh-gelu-narrow-mlp": tiny("falcon-7b", n_kv_heads=4, activation="gelu_tanh", d_ff=100),
    "falcon-new-architecture-one-norm-4-kv-heads": tiny("falcon-40b", shared_attn_norm=True, n_kv_heads=4,
                                                        rope_theta=50_000.0),
    # BLOOM: an untied head (no bias) with eps 1e-6 and 4 heads (a power of two); 12 heads of 8
    # (8 slopes, then 4 interleaved), a context of its own (seq_length)
    "bloom-untied-eps-1e-6-4-heads": tiny("bloom-560m", tie_embeddings=False, norm_eps=1e-6),
    "bloom-12-heads-of-8-context-200": tiny("bloom-176b", n_heads=12, n_kv_heads=12, head_dim=8, d_model=96,
                                            d_ff=384, max_seq_len=200),
    # Phi-3: GQA, a tied head, 12 of 16 dims rotated (Phi-4-mini's partial_rotary_factor 0.75) with
    # LongRoPE of its own factor and attention factor over O 8; no window, the tanh GELU
    "phi3-gqa-tied-partial-longrope-own-attention-factor": tiny(
        "phi-3-mini-128k", n_kv_heads=2, tie_embeddings=True, rope_fraction=0.75, attn_pattern=("global",),
        sliding_window=None, rope_scaling=RopeScaling(
            kind="longrope", factor=4.0, original_max_seq_len=8, attention_factor=1.25,
            short_factor=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0), long_factor=(1.1, 3.0, 9.0, 20.0, 40.0, 64.0))),
    "phi3-window-3-tanh-gelu": tiny("phi-3-mini-4k", sliding_window=3, activation="gelu_tanh"),
}


def moe_variant(preset: str, moe: dict, **changes):
    """tiny(preset) with `changes` and its MoEConfig's fields replaced by `moe`."""
    base = tiny(preset)
    return tiny(preset, moe=dataclasses.replace(base.moe, **moe), **changes)


# Mixtures of experts: what their presets leave off (windows, dense layers, top-1, biases,
# renormalising or not, an active clip, an expert width equal to the dense one).
MOE_VARIANTS = {
    "mixtral-window-tied-top1-linear-rope": moe_variant(
        "mixtral-8x7b", dict(n_experts=4, n_experts_per_token=1), attn_pattern=("sliding",), sliding_window=4,
        tie_embeddings=True, rope_scaling=LINEAR_2),
    # Qwen2-MoE's own rules: even layers below max_window_layers slide; layer 0 dense (mlp_only_layers)
    "qwen2-moe-dense-first-sliding-even-renormalized": moe_variant(
        "qwen1.5-moe-a2.7b", dict(renormalize=True, shared_d_ff=None), mlp_pattern=("dense", "moe"),
        attn_pattern=("sliding", "global"), sliding_window=4),
    "qwen2-moe-all-sliding-no-qkv-bias": moe_variant(
        "qwen2-57b-a14b", dict(n_experts=8, n_experts_per_token=3, aux_loss_coef=0.5), attn_pattern=("sliding",),
        sliding_window=4, qkv_bias=False),
    "qwen3-moe-sliding-biases-dense-first": moe_variant(
        "qwen3-30b-a3b", dict(renormalize=False, d_ff=None), mlp_pattern=("dense", "moe"), attn_pattern=("sliding",),
        sliding_window=4, qkv_bias=True, attn_out_bias=True),
    "olmoe-gqa-biases-renormalized-tied": moe_variant(
        "olmoe-1b-7b", dict(renormalize=True), n_kv_heads=2, qkv_bias=True, attn_out_bias=True, tie_embeddings=True),
    "dbrx-clip-0.5-no-renormalize-gelu": moe_variant(
        "dbrx", dict(renormalize=False), qkv_clip=0.5, activation="gelu_tanh"),
    # the objectives: Mixtral with OLMoE's (per layer, a z-loss), lmref's keys in config.json; OLMoE with
    # transformers' (pooled, no z-loss), none of them
    "mixtral-per-layer-aux-z-loss": moe_variant(
        "mixtral-8x7b", dict(aux_loss="per_layer", router_z_loss_coef=0.01)),
    "olmoe-pooled-aux-no-z-loss": moe_variant(
        "olmoe-1b-7b", dict(aux_loss="pooled", router_z_loss_coef=0.0)),
    # Llama 4: a RoPE layer with a causal mask ("global"), top-2 of 8 experts as wide as the dense
    # MLP, a tied head, llama3 scaling with a smoothed band, a stronger temperature
    "llama4-scout-global-rope-layer-top2-tied-llama3-band": moe_variant(
        "llama4-scout", dict(n_experts=8, n_experts_per_token=2, d_ff=None), attn_pattern=(
            "chunked", "global", "global_nope"), tie_embeddings=True, rope_scaling=RopeScaling(
            kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=32),
        attn_temperature_scale=0.5),
    # moe_layers no interleave step gives (0 and 3), NoPE first, QK norm, no temperature, tanh GELU
    "llama4-maverick-moe-layers-0-3-nope-first-qk-norm-no-temperature": moe_variant(
        "llama4-maverick", dict(n_experts=4), mlp_pattern=("moe", "dense", "dense"),
        attn_pattern=("global_nope", "chunked"), qk_norm="l2", attn_temperature_floor=None,
        attn_temperature_scale=None, activation="gelu_tanh"),
}
VARIANTS |= MOE_VARIANTS


def vision_variant(preset: str, vision: dict, **changes):
    """tiny(preset) with `changes` and its VisionConfig's fields replaced by `vision`."""
    return tiny(preset, vision=dataclasses.replace(tiny(preset).vision, **vision), **changes)


# LLaVA: what its presets leave off (the class token kept, an early feature layer counted from
# the front, no projector biases, other activations, a tied head, GQA, an odd grid of 1-channel images)
VARIANTS |= {
    "llava-full-layer-1-no-projector-bias-silu-projector-gelu-tower-tied": vision_variant(
        "llava-1.5-7b", dict(feature_strategy="full", feature_layer=1, projector_bias=False,
                             projector_activation="silu", activation="gelu"), tie_embeddings=True),
    "llava-5x5-grid-one-channel-gqa": vision_variant("llava-1.5-13b", dict(image_size=20, n_channels=1), n_kv_heads=2),
}
CONFIGS = {arch: case_config(arch) for arch in SUPPORTED_ARCHS} | VARIANTS

# Configs in the RoPE layout their type does not rotate (transformers rotates halves, but
# Llama 4 interleaved pairs): exported with q's and k's columns permuted, read back in the other.
OTHER_LAYOUT = {
    "llama3-interleaved-biases": tiny("llama3", rope_layout="interleaved", qkv_bias=True, attn_out_bias=True),
    # the q/k norm weights are permuted with the columns: one head's order, or the projection's
    "qwen3-interleaved": tiny("qwen3-8b", rope_layout="interleaved"),
    "olmo2-interleaved-gqa": tiny("olmo2-7b", rope_layout="interleaved", n_kv_heads=2),
    "gemma3-interleaved": tiny("gemma3-4b", rope_layout="interleaved"),
    # the fused q | k | v: q's and k's columns permuted in place, v's unmoved
    "dbrx-interleaved": tiny("dbrx", rope_layout="interleaved"),
    "olmoe-interleaved-gqa": tiny("olmoe-1b-7b", rope_layout="interleaved", n_kv_heads=2),
    "qwen3-moe-interleaved": tiny("qwen3-30b-a3b", rope_layout="interleaved"),
    "llama4-scout-halves": tiny("llama4-scout", rope_layout="halves"),
    # Falcon's fused q | k | v: the RoPE permutation of q and k, then the grouping per KV head
    "falcon-40b-interleaved-biases": tiny("falcon-40b", rope_layout="interleaved", qkv_bias=True, attn_out_bias=True,
                                          mlp_bias=True),
}


def tokens_for(key: str, config, params: dict, seq: int) -> np.ndarray:
    """Token ids [2, seq]: random (no image placeholder), or for a mixture of experts the golden's `routed_tokens`,
    whose k-th and (k+1)-th router logits are ROUTING_MARGIN apart at every layer, so that a
    float32 model chooses the golden's experts (one flip moves a token's output by O(1))."""
    if config.moe is None:
        tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, seq))
        if config.vision is not None:  # text only: an image placeholder would ask for an image
            tokens[tokens == config.vision.image_token_id] = 0
        return tokens
    return routed_tokens(key, CaseSpec(f"tokens-{seq}", "prefill", 2, seq, seed=0), config, params)
