"""Hypothesis strategies for LLaVA-style configs and their multimodal inputs (tests/jax's own:
tests/strategies.py draws the text-only space).

`vision_configs()` is `configs()` (every text knob) with a `vision` tower drawn by
`vision_fields`: patch grids of 1 to 3 cells a side (odd and even), patches of 1 to 3 pixels,
1 to 3 channels, 1 to 3 layers of 1 to 3 heads of odd or even width (towers 5 to 15 wide), any `feature_layer` in
range (negative and non-negative, 0 included: the pre-normed embeddings), both feature
strategies, every activation for the tower and the projector, the projector with and without
biases, the placeholder anywhere in the vocabulary.  LongRoPE is dropped: the spec refuses it
with a tower (spec/validation.py).

`image_inputs(config)` draws (tokens, pixel_values): 1 to 3 rows, 0 to 2 images in each (at
least one in all), each image's run of placeholders at a random position of its row (two runs
may touch), the other tokens text (any id but the placeholder's), pixels standard normal.
"""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
from hypothesis import strategies as st

from lmref.spec.config import Activation, FeatureStrategy, ModelConfig, VisionConfig
from tests.strategies import configs

ACTIVATIONS = typing.get_args(Activation)
FEATURE_STRATEGIES = typing.get_args(FeatureStrategy)
MAX_IMAGES_PER_ROW = 2
MAX_TEXT = 6  # text tokens beside the images of the fullest row
HEADS = tuple((n, d) for n in (1, 2, 3) for d in (2, 3, 4, 5))  # (n_heads, head_dim)
# A LayerNorm of 2 to 4 numbers is ill-conditioned enough that float32 itself misses the float32
# row (measured: a width-2 tower, the float64 twin 1e-14 off the golden, float32 4e-6 off on a
# capture of size 6e-2); tests/strategies.py draws d_model >= 5 for the decoder too.
MIN_WIDTH = 5


@st.composite
def vision_fields(draw, vocab_size: int) -> VisionConfig:
    grid, patch = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n_heads, head_dim = draw(st.sampled_from(HEADS).filter(lambda h: h[0] * h[1] >= MIN_WIDTH))
    n_layers = draw(st.integers(1, 3))
    return VisionConfig(
        image_size=grid * patch, patch_size=patch, n_channels=draw(st.integers(1, 3)),
        d_model=n_heads * head_dim, n_layers=n_layers, n_heads=n_heads, d_ff=draw(st.sampled_from((3, 5, 8))),
        activation=draw(st.sampled_from(ACTIVATIONS)), norm_eps=draw(st.sampled_from((1e-5, 1e-6))),
        feature_layer=draw(st.integers(-(n_layers + 1), n_layers)),
        feature_strategy=draw(st.sampled_from(FEATURE_STRATEGIES)),
        projector_activation=draw(st.sampled_from(ACTIVATIONS)), projector_bias=draw(st.booleans()),
        image_token_id=draw(st.integers(0, vocab_size - 1)),
    )


@st.composite
def vision_configs(draw, max_seq_len: int = 32) -> ModelConfig:
    """A drawn text config with a drawn tower; max_seq_len fits two images of 10 tokens and the text."""
    config = draw(configs(max_seq_len))
    longrope = config.rope_scaling is not None and config.rope_scaling.kind == "longrope"
    return dataclasses.replace(config, rope_scaling=None if longrope else config.rope_scaling,
                               vision=draw(vision_fields(config.vocab_size)))


def text_ids(config: ModelConfig, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Token ids of `shape`, uniform over the vocabulary but the placeholder."""
    ids = rng.integers(0, config.vocab_size - 1, shape)
    return ids + (ids >= config.vision.image_token_id)  # the placeholder's id skipped


@st.composite
def image_row(draw, config: ModelConfig, n_images: int, seq: int) -> list[int]:
    """Where each of the row's `n_images` runs starts: the text before each run, drawn."""
    t = config.vision.tokens_per_image
    cuts = sorted(draw(st.lists(st.integers(0, seq - n_images * t), min_size=n_images, max_size=n_images)))
    return [cut + i * t for i, cut in enumerate(cuts)]  # run i starts after cut_i text tokens and i runs


@st.composite
def image_inputs(draw, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int64 [B, S], pixel_values float64 [N, C, H, W]), the images in placeholder order."""
    v = config.vision
    batch = draw(st.integers(1, 3))
    counts = draw(st.lists(st.integers(0, MAX_IMAGES_PER_ROW), min_size=batch, max_size=batch)
                  .filter(lambda c: sum(c) > 0), label="images per row")
    fullest = max(counts) * v.tokens_per_image
    seq = draw(st.integers(fullest + 1, min(config.max_seq_len, fullest + MAX_TEXT)), label="seq")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="input seed"))
    tokens = text_ids(config, rng, (batch, seq))
    for row, count in enumerate(counts):
        for start in draw(image_row(config, count, seq), label=f"row {row} image starts"):
            tokens[row, start : start + v.tokens_per_image] = v.image_token_id
    pixels = rng.standard_normal((sum(counts), v.n_channels, v.image_size, v.image_size))
    return tokens.astype(np.int64), pixels
