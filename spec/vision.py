"""The image pathway's contracts: its parameter layout, its capture names, and the checks on
image inputs, shared by every backend (the math: spec/MATH.md, "Vision").

Parameters (input-major like every projection of spec/params.py: y = x @ W + b):

======================================  ======================  =================================
name                                    shape                   what
======================================  ======================  =================================
vision.patch_embed                      [C*p*p, Dv]             the patch convolution as a matmul;
                                                                row c*p*p + i*p + j reads channel
                                                                c, row i, column j of the patch
vision.class_embed                      [Dv]                    the class token
vision.positions                        [n_patches + 1, Dv]     learned, class token first
vision.pre_norm.weight | .bias          [Dv]                    CLIP's pre_layrnorm
vision.layers.{i}.attn_norm.weight|bias [Dv]                    layer_norm1
vision.layers.{i}.attn.wq|wk|wv|wo      [Dv, Dv]                q_proj, k_proj, v_proj, out_proj
vision.layers.{i}.attn.bq|bk|bv|bo      [Dv]
vision.layers.{i}.mlp_norm.weight|bias  [Dv]                    layer_norm2
vision.layers.{i}.mlp.w_up | b_up       [Dv, Fv] | [Fv]         fc1
vision.layers.{i}.mlp.w_down | b_down   [Fv, Dv] | [Dv]         fc2
vision.post_norm.weight | .bias         [Dv]                    post_layernorm (CLIP's pooled
                                                                output: LLaVA never reads it)
projector.w1 | b1                       [Dv, d_model] | [d_model]   linear_1 (b1: projector_bias)
projector.w2 | b2                       [d_model, d_model] | [d_model]  linear_2 (b2: projector_bias)
======================================  ======================  =================================

Every layer of the tower is a parameter, also those after `feature_layer` (and the post
norm), which no output depends on: a LLaVA checkpoint holds them, and the published counts
include them.

Inputs: `pixel_values` [n_images, C, H, W] (H = W = image_size), the images in the order their
placeholder tokens appear in the tokens read row by row (batch row 0 first, then row 1, ...);
image i fills the i-th run of `tokens_per_image` placeholders in that order (transformers'
`masked_scatter`).  Captures of a forward with images add, before "embed":

    vision.embed             [N, n_patches + 1, Dv]  patches + class token + positions, pre-normed
    vision.layers.{i}.attn   [N, n_patches + 1, Dv]  for the layers up to the feature layer
    vision.layers.{i}.mlp    [N, n_patches + 1, Dv]
    vision.layers.{i}.out    [N, n_patches + 1, Dv]
    vision.features          [N, T, Dv]              the feature layer's states, class token dropped
    projector                [N, T, d_model]         what replaces the placeholders' embeddings
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lmref.spec.config import ModelConfig, VisionConfig
from lmref.spec.errors import InputError

VISION_LAYER_COMPONENTS = ("attn", "mlp", "out")


def _layer_norm_shapes(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def _tower_layer_shapes(v: VisionConfig, p: str) -> dict[str, tuple[int, ...]]:
    d, f = v.d_model, v.d_ff
    shapes = _layer_norm_shapes(f"{p}.attn_norm", d)
    for name in ("q", "k", "v", "o"):
        shapes |= {f"{p}.attn.w{name}": (d, d), f"{p}.attn.b{name}": (d,)}
    shapes |= _layer_norm_shapes(f"{p}.mlp_norm", d)
    return shapes | {f"{p}.mlp.w_up": (d, f), f"{p}.mlp.b_up": (f,), f"{p}.mlp.w_down": (f, d), f"{p}.mlp.b_down": (d,)}


def vision_param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the tower's and the projector's parameters (none without `vision`)."""
    v = config.vision
    if v is None:
        return {}
    d = v.d_model
    shapes = {"vision.patch_embed": (v.n_channels * v.patch_size**2, d), "vision.class_embed": (d,),
              "vision.positions": (v.n_patches + 1, d)}
    shapes |= _layer_norm_shapes("vision.pre_norm", d)
    for i in range(v.n_layers):
        shapes |= _tower_layer_shapes(v, f"vision.layers.{i}")
    shapes |= _layer_norm_shapes("vision.post_norm", d)
    shapes["projector.w1"] = (d, config.d_model)
    shapes |= {"projector.b1": (config.d_model,)} if v.projector_bias else {}
    shapes["projector.w2"] = (config.d_model, config.d_model)
    return shapes | ({"projector.b2": (config.d_model,)} if v.projector_bias else {})


def vision_param_count(config: ModelConfig) -> int:
    """The number of `vision_param_shapes` entries' elements."""
    return _over_tower(config, lambda shapes: sum(math.prod(shape) for shape in shapes.values()))


def vision_param_name_count(config: ModelConfig) -> int:
    """The number of `vision_param_shapes` entries."""
    return _over_tower(config, len)


def _over_tower(config: ModelConfig, measure) -> int:
    """measure(vision_param_shapes(config)) for a measure that adds over entries, from one
    layer's shapes (every tower layer has the same), so that a deep tower counts as fast as a
    shallow one."""
    v = config.vision
    if v is None:
        return 0
    one_layer = measure(_tower_layer_shapes(v, "layer"))
    one_layer_tower = dataclasses.replace(config, vision=dataclasses.replace(v, n_layers=1, feature_layer=0))
    return measure(vision_param_shapes(one_layer_tower)) + (v.n_layers - 1) * one_layer


def vision_capture_names(config: ModelConfig) -> list[str]:
    """The captured intermediates of the image pathway, in computation order."""
    v = config.vision
    layers = [f"vision.layers.{i}.{part}" for i in range(v.layers_run) for part in VISION_LAYER_COMPONENTS]
    return ["vision.embed", *layers, "vision.features", "projector"]


def image_token_positions(config: ModelConfig, tokens: np.ndarray) -> np.ndarray:
    """[n, 2] int64: (batch row, position) of every image placeholder, in row-major order."""
    if config.vision is None:
        return np.zeros((0, 2), dtype=np.int64)
    return np.argwhere(np.asarray(tokens) == config.vision.image_token_id).astype(np.int64)


def check_images(config: ModelConfig, tokens: np.ndarray, pixel_values: object, *,
                 prompt_len: int | None = None) -> np.ndarray | None:
    """`pixel_values` as a float [N, C, H, W] array (None without images), or `InputError`
    naming what is wrong: images for a model without a tower, an image of the wrong size or
    channel count, non-finite pixels, or image placeholders in `tokens` (int64 [B, S], checked)
    that the images do not fill exactly.  With `prompt_len`, every placeholder must sit in the
    prompt: a decode step feeds one token's embedding, never an image's features."""
    v = config.vision
    placeholders = len(image_token_positions(config, tokens))
    if pixel_values is None:
        if placeholders:
            first = tuple(int(i) for i in image_token_positions(config, tokens)[0])
            raise InputError(f"tokens hold {placeholders} image tokens (id {v.image_token_id}, first at {first}) "
                             "but no pixel_values were given")
        return None
    if v is None:
        raise InputError(f"pixel_values were given but config {config.name!r} has no vision tower")
    images = np.asarray(pixel_values)
    if images.dtype == object or not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"pixel_values must be a floating-point array, got dtype {images.dtype}")
    expected = (v.n_channels, v.image_size, v.image_size)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise InputError(f"pixel_values must have shape [n_images, {v.n_channels}, {v.image_size}, {v.image_size}] "
                         f"(channels, height, width), got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise InputError(f"pixel_values hold non-finite values, first at {tuple(np.argwhere(~np.isfinite(images))[0])}")
    needed = len(images) * v.tokens_per_image
    if placeholders != needed:
        raise InputError(f"tokens hold {placeholders} image tokens (id {v.image_token_id}) but {len(images)} images of "
                         f"a {v.grid}x{v.grid} patch grid fill {needed} ({v.tokens_per_image} each)")
    if prompt_len is not None and placeholders and image_token_positions(config, tokens)[:, 1].max() >= prompt_len:
        raise InputError(f"image tokens must all sit in the prompt (the first {prompt_len} positions): a decode step "
                         "feeds single tokens")
    return images
