"""The graphs of a config with a vision tower: three, as vision-language models ship in ONNX
(the LLaVA layout of transformers.js / Optimum, huggingface/transformers#33637:
`vision_encoder`, `embed_tokens`, `decoder_model_merged` taking inputs_embeds;
onnxruntime-genai's vision, text-embedding and text components, its Phi-3 vision build
guide).  The merge stays out of the decoder so that a decode step embeds one text token
(xenova's review of huggingface/optimum#1790):

    vision.onnx   pixel_values [n_images, C, H, W] float32
                    -> image_features  [n_images, T, d_model]  the tower and the projector: the rows
                                                               that replace the placeholders
                       vision_features [n_images, T, Dv]       the tower's features (feature layer,
                                                               class token dropped): capture
                                                               `vision.features`
    embed.onnx    input_ids [batch, sequence] int64
                    -> inputs_embeds [batch, sequence, d_model]  the token embedding's raw lookup
    model.onnx    inputs_embeds [batch, sequence, d_model], attention_mask, position_ids, pasts
                    -> logits, presents (export/decoder.py OnnxEmbedsDecoder)

The split is where spec/MATH.md "Vision" puts the merge: the image rows replace rows of the
LOOKUP, and everything a config does after the lookup (BLOOM's embedding norm, Gemma's
scale, learned positions) applies to text and image rows alike.  So embed.onnx outputs the
lookup alone, the caller replaces the placeholders' rows (export/multimodal.py, numpy:
transformers `LlavaModel.forward`'s `masked_scatter`, row-major), and the decoder applies the
rest with the twin's own Embedding (decoder.py `lookup_given`).  The split is exact for every
config: nothing between the lookup and the merge is left to express, so no feature is
refused for it.  For LLaVA (a LLaMA decoder: no norm, scale or positions there) inputs_embeds
is the lookup with the image rows, as in Optimum and transformers.

Every wrapper runs the twin's own modules (impl_torch/vision.py through
`Transformer.image_features`; `embed.tokens`), in float32 with eager attention, like the
decoder: the export computes the torch twin's math.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmref.export.decoder import ATTN_IMPL, DTYPE
from lmref.impl_torch import Transformer
from lmref.spec.config import ModelConfig

VISION, EMBED, DECODER = "vision", "embed", "decoder"  # the graphs' roles (export.json `graphs`)
N_IMAGES_DIM = "n_images"
VISION_INPUTS, VISION_OUTPUTS = ["pixel_values"], ["image_features", "vision_features"]
EMBED_INPUTS, EMBED_OUTPUTS = ["input_ids"], ["inputs_embeds"]


def graph_roles(config: ModelConfig) -> list[str]:
    """The graphs an export of `config` holds, in the chain's order."""
    return [DECODER] if config.vision is None else [VISION, EMBED, DECODER]


def prepared(model: Transformer) -> Transformer:
    """`model` in float32 on eager attention (in place, as the decoder wrapper sets it)."""
    model = model.to(DTYPE)
    model.attn_impl = ATTN_IMPL
    return model


class OnnxVision(nn.Module):
    """pixel_values [N, C, H, W] -> (image_features [N, T, d_model], vision_features [N, T, Dv]):
    the twin's `Transformer.image_features` (tower, feature layer, projector)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = prepared(model)
        self.eval()

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        projected = self.model.image_features(pixel_values, captured)  # [N, T, d_model]
        return projected, captured["vision.features"]  # [N, T, Dv]


class OnnxEmbed(nn.Module):
    """input_ids [B, S] -> inputs_embeds [B, S, d_model]: the token embedding's lookup alone."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = prepared(model)
        self.eval()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed.tokens(input_ids)  # [B, S, d_model]


@dataclass(frozen=True)
class GraphSpec:
    """What torch.onnx.export needs for one graph."""

    module: nn.Module
    example: tuple
    dynamic_shapes: dict
    input_names: list[str]
    output_names: list[str]


def image_graphs(model: Transformer) -> dict[str, GraphSpec]:
    """The vision and embed graphs of a model with a vision tower.  Examples of 2 images and a
    [2, 3] batch: sizes 0 and 1 would be specialised (export/decoder.py example_inputs)."""
    from torch.export import Dim

    v = model.config.vision
    images = torch.zeros(2, v.n_channels, v.image_size, v.image_size, dtype=DTYPE)
    tokens = torch.zeros(2, 3, dtype=torch.int64)
    return {
        VISION: GraphSpec(OnnxVision(model), (images,), {"pixel_values": {0: Dim(N_IMAGES_DIM)}},
                          VISION_INPUTS, VISION_OUTPUTS),
        EMBED: GraphSpec(OnnxEmbed(model), (tokens,), {"input_ids": {0: Dim("batch"), 1: Dim("sequence")}},
                         EMBED_INPUTS, EMBED_OUTPUTS),
    }


def interface(config: ModelConfig, role: str) -> tuple[dict[str, list], dict[str, list]]:
    """({input: dims}, {output: dims}) of the vision or embed graph of `config`."""
    v = config.vision
    if role == VISION:
        n = N_IMAGES_DIM
        return ({"pixel_values": [n, v.n_channels, v.image_size, v.image_size]},
                {"image_features": [n, v.tokens_per_image, config.d_model],
                 "vision_features": [n, v.tokens_per_image, v.d_model]})
    return {"input_ids": ["batch", "sequence"]}, {"inputs_embeds": ["batch", "sequence", config.d_model]}
