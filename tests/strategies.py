"""Hypothesis strategies over the implemented config space, shared by the twins' tests.

`configs()` draws valid `ModelConfig`s with every flag that some preset uses (and their
combinations), odd sizes such as 5, 7 and 13, head counts that are not powers of two, and
per-layer attention patterns (global, sliding, chunked, RoPE-less global layers) whose windows
and chunks are shorter than the drawn sequences, so that every mask rule cuts keys off.
Gemma's, Qwen 3's and OLMo 2's knobs too: norm placements, (1 + w) norms, QK norms, softcaps
small enough to bend the scores and logits, a query scale of its own, a local RoPE base;
BLOOM's norm after the token embedding and its truncated tanh GELU; and PaLM's: a logit scale
(before the softcap) and the logit z-loss's weight.
A failing example prints as `ModelConfig(...)`, which can be pasted back into Python.

`moe_configs()` draws the same configs with mixtures of experts (`moe_fields`): every routing
knob of spec's MoEConfig, on every layer or on every other one.  It is separate from
`configs()` so that a twin opts in once it computes MoE (tests/torch does; a backend that
does not would be refused by name, UnsupportedFeature).

`vision_configs()` draws the same configs with a LLaVA vision tower (`vision_fields`), and
`image_batches(config)` tokens with 0, 1 or 2 images per row at drawn positions, with their
pixels.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
from hypothesis import strategies as st

from lmref.spec.config import Activation, ModelConfig, MoEConfig, RopeScaling, VisionConfig

ODD_SIZES = (5, 7, 13)


@st.composite
def rope_fields(draw) -> dict:
    head_dim = draw(st.sampled_from((4, 6, 7, 8, 16)))
    # every fraction that rotates at least one pair; odd heads never rotate whole, so a pass-through
    # of odd width (head 7: 5 of 0.5, 0.25 and 0.4) or of width 2 (head 6: 0.5) is drawn too
    fractions = [f for f in (1.0, 0.5, 0.4, 0.25) if int(head_dim * f) >= 2 and not (head_dim % 2 and f == 1.0)]
    fields = dict(
        position="rope", head_dim=head_dim,
        rope_layout=draw(st.sampled_from(("halves", "interleaved"))),
        rope_fraction=draw(st.sampled_from(fractions)),
        rope_theta=draw(st.sampled_from((10_000.0, 500_000.0))),
    )
    scaling = draw(st.sampled_from((None, "linear", "llama3", "longrope")))
    if scaling == "linear":
        fields["rope_scaling"] = RopeScaling(kind="linear", factor=draw(st.sampled_from((2.0, 4.0))))
    elif scaling == "llama3":
        fields["rope_scaling"] = RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0,
                                             high_freq_factor=4.0, original_max_seq_len=draw(st.sampled_from((8, 16, 64))))
    elif scaling == "longrope":
        fields["rope_scaling"] = draw(longrope(int(head_dim * fields["rope_fraction"]) // 2))
    return fields


@st.composite
def longrope(draw, pairs: int) -> RopeScaling:
    """LongRoPE with random short and long factors (one per rotated pair), an original context
    of 2 to 8 (below the drawn sequences' lengths, often: the long factors and a decode that
    crosses it are drawn), the attention factor derived from `factor` or given."""
    factors = st.lists(st.floats(1.0, 64.0, allow_nan=False), min_size=pairs, max_size=pairs).map(tuple)
    return RopeScaling(kind="longrope", factor=draw(st.sampled_from((1.0, 4.0, 32.0))),
                       original_max_seq_len=draw(st.integers(2, 8)), short_factor=draw(factors),
                       long_factor=draw(factors), attention_factor=draw(st.sampled_from((None, 1.3))))


@st.composite
def attention_layers(draw, position: str) -> dict:
    """attn_pattern (1 or 2 entries, cycled over the layers) with its window and chunk."""
    kinds = ["global", "sliding", "chunked"] + (["global_nope"] if position == "rope" else [])
    pattern = tuple(draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=2)))
    fields: dict = dict(attn_pattern=pattern)
    if "sliding" in pattern:
        fields["sliding_window"] = draw(st.sampled_from((1, 2, 3, 5)))
    if "chunked" in pattern:
        fields["attn_chunk_size"] = draw(st.sampled_from((2, 3, 4)))
    return fields


@st.composite
def configs(draw, max_seq_len: int = 32) -> ModelConfig:
    n_kv_heads = draw(st.sampled_from((1, 2, 3)))
    n_heads = n_kv_heads * draw(st.sampled_from((1, 2, 3)))
    position = draw(st.sampled_from(("learned", "rope", "alibi", "none")))
    fields = draw(rope_fields()) if position == "rope" else dict(position=position,
                                                                 head_dim=draw(st.sampled_from((3, 4, 5, 8))))
    if position == "alibi":  # head counts 1..9 drawn above: 3, 6 and 9 tell the two rules apart
        fields["alibi_slopes"] = draw(st.sampled_from(("press", "geometric")))
    n_layers = draw(st.integers(1, 3))
    layers = draw(attention_layers(position))
    if len(layers["attn_pattern"]) > n_layers:
        layers = dict(attn_pattern=layers["attn_pattern"][:n_layers]) | {
            k: v for k, v in layers.items() if k != "attn_pattern"
            and (k != "sliding_window" or "sliding" in layers["attn_pattern"][:n_layers])
            and (k != "attn_chunk_size" or "chunked" in layers["attn_pattern"][:n_layers])}
    norm = draw(st.sampled_from(("layernorm", "rmsnorm")))
    norm_weight = draw(st.booleans())
    mlp = draw(st.sampled_from(("plain", "gated")))
    placement = draw(st.sampled_from(("pre", "sandwich", "post_sublayer")))
    parallel = placement == "pre" and draw(st.booleans())  # GPT-NeoX (two norms), GPT-J (one)
    if position == "rope" and "sliding" in layers["attn_pattern"] and draw(st.booleans()):
        fields["rope_theta_local"] = draw(st.sampled_from((100.0, 10_000.0)))
    return ModelConfig(
        name="drawn",
        vocab_size=draw(st.sampled_from((*ODD_SIZES, 31, 64))),
        d_model=draw(st.sampled_from((*ODD_SIZES, 8, 16))),
        n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=n_kv_heads,
        d_ff=draw(st.sampled_from((*ODD_SIZES, 16))),
        max_seq_len=max_seq_len,
        norm=norm, norm_eps=draw(st.sampled_from((1e-5, 1e-6))),
        norm_weight=norm_weight,
        norm_bias=norm == "layernorm" and norm_weight and draw(st.booleans()),
        qkv_bias=draw(st.booleans()), attn_out_bias=draw(st.booleans()),
        qkv_clip=draw(st.sampled_from((None, 0.5))),
        mlp=mlp,
        activation=draw(st.sampled_from(("gelu", "gelu_tanh", "gelu_tanh_truncated", "silu", "relu", "quick_gelu"))),
        mlp_bias=draw(st.booleans()),
        tie_embeddings=draw(st.booleans()), lm_head_bias=draw(st.booleans()),
        norm_unit_offset=norm_weight and draw(st.booleans()),
        norm_placement=placement,
        parallel_residual=parallel, shared_attn_norm=parallel and draw(st.booleans()),
        qk_norm=draw(st.sampled_from(("none", "per_head", "per_projection"))),
        embedding_scale=draw(st.sampled_from(("none", "sqrt_d_model"))),
        embedding_norm=draw(st.booleans()),  # BLOOM's norm after the token embedding
        query_scale_dim=draw(st.sampled_from((None, 3, 16))),
        attn_softcap=draw(st.sampled_from((None, 0.5, 5.0))),
        final_logit_softcap=draw(st.sampled_from((None, 0.5, 5.0))),
        logit_scale=draw(st.sampled_from((1.0, 0.125, 3.0))),  # PaLM's d_model^-0.5, or larger
        logit_z_loss_coef=draw(st.sampled_from((0.0, 1e-4, 0.5))),  # PaLM's, and one the loss shows
        **fields, **layers,
    )


@st.composite
def moe_fields(draw, n_layers: int) -> dict:
    """moe and mlp_pattern: 1 to 9 experts, any k <= E, both router kinds, with or without
    renormalisation, the weight on the input (Llama 4) or the output, a shared expert (one
    or two, of its own width or not, gated or not), the auxiliary losses (either kind of
    load-balancing loss, a router z-loss, each weighted or off); every layer a
    mixture, or dense and mixture alternating (n_layers >= 2)."""
    n_experts = draw(st.integers(1, 9))
    n_shared = draw(st.sampled_from((0, 1, 2)))
    moe = MoEConfig(
        n_experts=n_experts,
        n_experts_per_token=draw(st.integers(1, n_experts)),
        router=draw(st.sampled_from(("softmax_topk", "sigmoid_topk"))),
        d_ff=draw(st.sampled_from((None, *ODD_SIZES))),
        router_scales_input=draw(st.booleans()),
        renormalize=draw(st.booleans()),
        n_shared_experts=n_shared,
        shared_d_ff=draw(st.sampled_from((None, 5, 16))) if n_shared else None,
        shared_expert_gate=n_shared > 0 and draw(st.booleans()),
        aux_loss_coef=draw(st.sampled_from((0.0, 0.01, 0.5))),
        aux_loss=draw(st.sampled_from(("pooled", "per_layer"))),
        router_z_loss_coef=draw(st.sampled_from((0.0, 0.001, 0.5))),
    )
    patterns = [("moe",)] + ([("dense", "moe")] if n_layers >= 2 else [])
    return dict(moe=moe, mlp_pattern=draw(st.sampled_from(patterns)))


@st.composite
def moe_configs(draw, max_seq_len: int = 32) -> ModelConfig:
    """`configs()` with mixtures of experts (`moe_fields`); no MLP biases (the experts have none),
    and no LongRoPE: its decode re-runs prefixes (spec/MATH.md "LongRoPE") whose routing margins
    the MoE examples, checked on the whole sequence, do not cover."""
    config = draw(configs(max_seq_len))
    longrope = config.rope_scaling is not None and config.rope_scaling.kind == "longrope"
    return dataclasses.replace(config, mlp_bias=False, rope_scaling=None if longrope else config.rope_scaling,
                               **draw(moe_fields(config.n_layers)))


@st.composite
def token_batches(draw, config: ModelConfig, max_batch: int = 3, max_seq: int = 9) -> np.ndarray:
    batch = draw(st.integers(1, max_batch))
    seq = draw(st.integers(1, min(max_seq, config.max_seq_len)))
    ids = draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=batch * seq, max_size=batch * seq))
    return np.array(ids, dtype=np.int64).reshape(batch, seq)


seeds = st.integers(0, 2**31 - 1)


@st.composite
def vision_fields(draw, vocab_size: int) -> VisionConfig:
    """A tower: grids of 1 to 3 patches per side (odd and even) of 1 to 3 pixels, 1 or 3
    channels, 1 to 3 heads of 2 to 4 dims, 1 to 3 layers, any feature layer (counted from the
    end or from the start, 0 being the embeddings), both feature strategies, a projector with
    or without biases, every activation in the tower and in the projector, the placeholder
    anywhere in the vocabulary."""
    grid, patch = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n_layers, n_heads = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    activations = st.sampled_from(typing.get_args(Activation))
    return VisionConfig(
        image_size=grid * patch, patch_size=patch, n_channels=draw(st.sampled_from((1, 3))),
        d_model=n_heads * draw(st.integers(2, 4)), n_layers=n_layers, n_heads=n_heads,
        d_ff=draw(st.sampled_from((*ODD_SIZES, 16))), activation=draw(activations),
        norm_eps=draw(st.sampled_from((1e-5, 1e-6))), feature_layer=draw(st.integers(-(n_layers + 1), n_layers)),
        feature_strategy=draw(st.sampled_from(("drop_class", "full"))), projector_activation=draw(activations),
        projector_bias=draw(st.booleans()), image_token_id=draw(st.integers(0, vocab_size - 1)),
    )


@st.composite
def vision_configs(draw, max_seq_len: int = 32) -> ModelConfig:
    """`configs()` with a vision tower (`vision_fields`); no LongRoPE, which spec refuses with
    a tower (its decode re-runs the sequence from tokens, which do not carry the image)."""
    config = draw(configs(max_seq_len))
    longrope = config.rope_scaling is not None and config.rope_scaling.kind == "longrope"
    return dataclasses.replace(config, rope_scaling=None if longrope else config.rope_scaling,
                               vision=draw(vision_fields(config.vocab_size)))


@st.composite
def image_batches(draw, config: ModelConfig, max_batch: int = 3, max_text: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, S], pixel_values [N, C, H, W] float64): 0, 1 or 2 images in each row, at
    least one in the batch, each a run of `tokens_per_image` placeholders anywhere among the
    row's text (first, last, back to back, or between); text ids are anything but the
    placeholder; the images are numbered in row-major order of their placeholders (spec/
    vision.py).  Pixels uniform with standard deviation 1, like the golden cases'."""
    v = config.vision
    run = v.tokens_per_image
    batch = draw(st.integers(1, max_batch))
    counts = draw(st.lists(st.integers(0, 2), min_size=batch, max_size=batch).filter(any))
    longest = max(counts) * run
    seq = longest + draw(st.integers(0, max(0, min(max_text, config.max_seq_len - longest))))
    text_ids = st.integers(0, config.vocab_size - 2).map(lambda t: t + (t >= v.image_token_id))  # skips the placeholder
    rows = []
    for count in counts:
        n_text = seq - count * run
        cuts = sorted(draw(st.lists(st.integers(0, n_text), min_size=count, max_size=count)))  # text before each image
        text = draw(st.lists(text_ids, min_size=n_text, max_size=n_text))
        row, done = [], 0
        for cut in cuts:
            row += text[done:cut] + [v.image_token_id] * run
            done = cut
        rows.append(row + text[done:])
    shape = (sum(counts), v.n_channels, v.image_size, v.image_size)
    pixels = np.random.default_rng(draw(seeds)).uniform(-math.sqrt(3.0), math.sqrt(3.0), size=shape)
    return np.array(rows, dtype=np.int64), pixels
