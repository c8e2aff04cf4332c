"""The negative controls of LLaVA's image pathway (issue 14; tests/controls.py runs them with the
others): one porting mistake per vision knob and per convention of the merge, each on the
llava-1.5-7b cases (their image cases fail; the text-only cases pass, as they should).

The tower's LayerNorm eps has no control: 1e-6 for CLIP's 1e-5 moves the logits by about 1e-6
relative, below what a float32 check resolves (tests/test_knobs_alive.py switches it x 10).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lmref import impl_numpy
import lmref.impl_numpy.model
import lmref.impl_numpy.vision
from lmref.spec.config import VisionConfig
from tests.control_kinds import ConfigMistake, Control, Float32Golden, PatchMistake, _float32, _float32_images

ARCH = "llava-1.5-7b"


class VisionMistake(ConfigMistake):
    """A misread field of the `vision` sub-config."""

    def adjust(self, config):
        return dataclasses.replace(config, vision=dataclasses.replace(config.vision, **self.changes))


def _patches_column_major(v: VisionConfig, images: np.ndarray) -> np.ndarray:
    """The patch grid read column by column (a transposed image)."""
    n, c, g, p = images.shape[0], v.n_channels, v.grid, v.patch_size
    x = images.reshape(n, c, g, p, g, p).transpose(0, 4, 2, 1, 3, 5)  # [N, gc, gr, C, pr, pc]: the bug
    return x.reshape(n, g * g, c * p * p)


def _last_patch_dropped(v: VisionConfig, hidden: np.ndarray) -> np.ndarray:
    """`[:, :-1]` for `[:, 1:]`: the class token kept, the last patch dropped."""
    return hidden[:, :-1] if v.feature_strategy == "drop_class" else hidden


def _images_in_reverse(config, tokens, embeddings, projected):
    """The images fill the placeholders last image first."""
    return lmref.impl_numpy.vision.merge_images(config, tokens, embeddings, projected[::-1])


class LossOverPlaceholders(Float32Golden):
    """The cross-entropy over every target, the image placeholders' included (labels not masked)."""

    name = "llava_loss_over_placeholders"

    def loss(self, config, params, tokens, pixel_values=None):
        logits = impl_numpy.forward(config, _float32(params), tokens, pixel_values=_float32_images(pixel_values))
        logp = impl_numpy.model.log_softmax(logits[:, :-1])  # [B, S-1, V]
        return float(-np.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean())


VISION_CONTROLS: list[Control] = [
    Control(ARCH, VisionMistake("llava_feature_layer_last", feature_layer=-1),
            "LLaVA's image features from the tower's last layer instead of its penultimate (-2)"),
    Control(ARCH, VisionMistake("llava_tower_exact_gelu", activation="gelu"),
            "CLIP's quick GELU, x sigmoid(1.702 x), replaced by the exact GELU"),
    Control(ARCH, VisionMistake("llava_projector_tanh_gelu", projector_activation="gelu_tanh"),
            "the projector's exact GELU replaced by the tanh approximation"),
    Control(ARCH, VisionMistake("llava_projector_bias_dropped", projector_bias=False),
            "the projector's linear_1 / linear_2 biases left out"),
    Control(ARCH, PatchMistake("llava_patches_column_major", lmref.impl_numpy.vision, "patchify",
                               _patches_column_major),
            "the patch grid flattened column by column instead of row by row"),
    Control(ARCH, PatchMistake("llava_class_token_kept", lmref.impl_numpy.vision, "select_features",
                               _last_patch_dropped),
            "the features sliced [:, :-1] (class token kept, last patch dropped) instead of [:, 1:]"),
    Control(ARCH, PatchMistake("llava_images_merged_in_reverse", lmref.impl_numpy.model, "merge_images",
                               _images_in_reverse),
            "the images fill the placeholders in reverse order"),
    Control(ARCH, LossOverPlaceholders(), "the loss counts the image placeholders as targets"),
]
