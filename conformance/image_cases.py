"""The multimodal golden cases: where a model with a vision tower (spec/vision.py) gets its
images, and the images themselves.

Each case places runs of `tokens_per_image` placeholders at fixed (row, start) spots; the other
tokens are text, drawn so that none is the placeholder (a stray one would ask for an image the
case does not have).  The cases cover what the merge must get right:

  prefill-image-b2-sN          one image per row, at different positions, captured
  prefill-images2-b1-sN        two images in one sequence, captured
  prefill-image-one-row-b2-sN  an image in row 0 only, row 1 all text, captured
  decode-image-b2-pP-n5        a prefill with an image in each row, then 5 single-token steps

Pixels are uniform with standard deviation 1 (CLIP's normalised inputs are of that size), from
the counter-based stream of spec/params.py, so every machine draws the same images.
"""

from __future__ import annotations

import math

import numpy as np

from lmref.spec.config import ModelConfig
from lmref.spec.params import uniform01


def image_case_specs(config: ModelConfig, case_spec: type, kind: str) -> list:
    """The multimodal cases of `kind` ("prefill" or "decode") of a config with a vision tower
    (none without one)."""
    if config.vision is None:
        return []
    t = config.vision.tokens_per_image
    return [spec for spec in [
        case_spec(f"prefill-image-b2-s{t + 7}", "prefill", 2, t + 7, seed=6, capture=True, images=((0, 1), (1, 4)),
                  description="one image per row, at positions 1 and 4"),
        case_spec(f"prefill-image-one-row-b2-s{t + 5}", "prefill", 2, t + 5, seed=8, capture=True, images=((0, 3),),
                  description="an image in row 0 only; row 1 is text"),
        case_spec(f"prefill-images2-b1-s{2 * t + 6}", "prefill", 1, 2 * t + 6, seed=7, capture=True,
                  images=((0, 2), (0, t + 4)), description="two images in one sequence, two text tokens apart"),
        case_spec(f"decode-image-b2-p{t + 3}-n5", "decode", 2, t + 8, seed=9, prompt_len=t + 3,
                  images=((0, 1), (1, 2)), description="a prefill with an image in each row, then 5 single-token steps"),
    ] if spec.kind == kind]


def text_ids(config: ModelConfig, u: np.ndarray) -> np.ndarray:
    """Token ids from uniforms in [0, 1): any id but the image placeholder."""
    if config.vision is None:
        return np.floor(u * config.vocab_size).astype(np.int64)
    ids = np.floor(u * (config.vocab_size - 1)).astype(np.int64)
    return ids + (ids >= config.vision.image_token_id)  # the placeholder's id skipped


def place_images(config: ModelConfig, tokens: np.ndarray, images: tuple[tuple[int, int], ...]) -> np.ndarray:
    """`tokens` with a run of placeholders at each (row, start) of `images`."""
    placed = tokens.copy()
    for row, start in images:
        placed[row, start : start + config.vision.tokens_per_image] = config.vision.image_token_id
    return placed


def case_pixels(arch: str, name: str, seed: int, config: ModelConfig, n_images: int) -> np.ndarray:
    """[n_images, C, H, W] float64 pixels, uniform with standard deviation 1."""
    v = config.vision
    shape = (n_images, v.n_channels, v.image_size, v.image_size)
    u = uniform01(seed, f"pixels/{arch}/{name}", math.prod(shape)).reshape(shape)
    return (2.0 * u - 1.0) * math.sqrt(3.0)
