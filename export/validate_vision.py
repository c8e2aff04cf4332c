"""validate-onnx on a config with a vision tower: images in the scenario's rows, and the
vision graph on its own against the golden tower and projector.

Each row of export/validate.py's left-padded batch gets one image: its prompt is one text
token, the image's `tokens_per_image` placeholders, then text (`IMAGE_AT` = 1), so the
padded row's image sits behind the padding and both rows decode after an image prefill.
The chain (export/multimodal.py) runs the batch with both images (row 0's first, the
row-major order of the placeholders); the golden and the torch twin run each row unpadded
with its own image.  Text tokens are drawn from every id but the placeholder, the padding
token is not the placeholder either, and pixels are uniform with standard deviation 1
(CLIP's normalised inputs are of that size; conformance/image_cases.py draws the same kind).

A mixture of experts keeps text-only rows: its tokens are chosen so that no golden routing
decision is within a margin of flipping (export/routing.py), a search that runs without
images; its image pathway is checked by the vision graph alone.

The vision graph alone: vision.onnx's `image_features` and `vision_features` of the
scenario's images against impl_numpy.vision's projected features and tower features
(float64), gated as the conformance suite gates captured intermediates and logits: nmse and
allclose of the float32 row (a softmax over hidden features means nothing, so no kl or top1).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lmref.conformance.metrics import compare, gate
from lmref.conformance.tolerances import Tolerance
from lmref.export.checks import FeaturesCheck
from lmref.spec.config import ModelConfig

IMAGE_AT = 1  # the first placeholder's index in each row's prompt


def has_images(config: ModelConfig) -> bool:
    """Whether the scenario's rows carry images (a vision tower without experts)."""
    return config.vision is not None and config.moe is None


def image_prompt_len(config: ModelConfig, pad: int) -> int:
    """The shortest default prompt whose padded row holds a text token, an image and two text tokens."""
    return IMAGE_AT + config.vision.tokens_per_image + 2 + pad if has_images(config) else 0


def text_ids(config: ModelConfig, rng: np.random.Generator, size) -> np.ndarray:
    """Random token ids; with a vision tower, any but the image placeholder."""
    if config.vision is None:
        return rng.integers(0, config.vocab_size, size=size)
    ids = rng.integers(0, config.vocab_size - 1, size=size)
    return ids + (ids >= config.vision.image_token_id)  # the placeholder's id skipped


def pad_id(config: ModelConfig) -> int:
    """The left padding's token: 0, or 1 where 0 is the image placeholder."""
    return int(config.vision is not None and config.vision.image_token_id == 0)


def draw_pixels(config: ModelConfig, rng: np.random.Generator, n_images: int) -> np.ndarray:
    """[n_images, C, H, W] float64 pixels, uniform with standard deviation 1."""
    v = config.vision
    return (2.0 * rng.random((n_images, v.n_channels, v.image_size, v.image_size)) - 1.0) * math.sqrt(3.0)


def with_images(config: ModelConfig, batch, seed: int):
    """export/validate.py's PaddedBatch with an image at IMAGE_AT in each row's prompt, its
    pixels in `images` (one [1, C, H, W] array per row)."""
    v = config.vision
    rng = np.random.default_rng([seed, 14])
    prompts = []
    for prompt in batch.prompts:
        need = IMAGE_AT + v.tokens_per_image + 1
        if len(prompt) < need:
            raise ValueError(f"a prompt of {len(prompt)} token(s) cannot hold a text token, an image of "
                             f"{v.tokens_per_image} tokens and a text token: each row needs {need} or more "
                             "(--prompt-len, less --pad for the padded row)")
        placed = prompt.copy()
        placed[IMAGE_AT : IMAGE_AT + v.tokens_per_image] = v.image_token_id
        prompts.append(placed)
    images = tuple(draw_pixels(config, rng, 1) for _ in prompts)
    return dataclasses.replace(batch, prompts=prompts, images=images, pad_id=pad_id(config))


def image_line(config: ModelConfig) -> str:
    """What the scenario does with the image pathway."""
    v = config.vision
    if v is None:
        return ""
    if not has_images(config):
        return ("a vision tower with a mixture of experts: the rows are text only (their tokens are chosen for routing "
                "margins without images); the vision graph is checked alone")
    return (f"images: one per row at prompt index {IMAGE_AT} ({v.tokens_per_image} placeholder tokens, id "
            f"{v.image_token_id}; the padded row's behind its padding), merged into embed.onnx's lookup")


def check_image_features(provider: str, chain, config: ModelConfig, params: dict, pixel_values: np.ndarray,
                         tol: Tolerance) -> list[FeaturesCheck]:
    """vision.onnx (through `chain`, a MultimodalSession) against impl_numpy.vision on `pixel_values`
    [N, C, H, W]: the projected image features, then the tower's features."""
    from lmref.impl_numpy.vision import image_features

    captured: dict = {}
    golden = {"image_features": image_features(config, params, pixel_values, captured)}  # [N, T, d_model]
    golden["vision_features"] = captured["vision.features"]  # [N, T, Dv]
    graph = chain.image_outputs(pixel_values)
    features_tol = dataclasses.replace(tol, kl=math.inf, top1=0.0)  # the gates of hidden features
    checks = []
    for name in ("image_features", "vision_features"):
        m = compare(graph[name], golden[name], features_tol)
        checks.append(FeaturesCheck(provider, "golden (float64)", f"{name} (vision.onnx alone)", m,
                                    gate(m, features_tol)))
    return checks
