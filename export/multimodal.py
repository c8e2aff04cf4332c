"""The three graphs of a vision-language export (export/vision_graphs.py) chained in
onnxruntime, behind DecoderSession's interface (export/runtime.py):

    pixel_values [N, C, H, W] --vision.onnx--> image_features [N, T, d_model]
    input_ids [B, S]          --embed.onnx-->  the lookup [B, S, d_model]
    merge (numpy)             the placeholders' rows of the lookup replaced by the images' rows
    inputs_embeds [B, S, d_model], attention_mask, position_ids, pasts --model.onnx--> logits, presents

The merge is spec/MATH.md "Vision"'s: the rows where `input_ids == image_token_id`, in
row-major order over (batch, position), take the images' T rows each, image after image
(transformers `LlavaModel.forward`: `inputs_embeds.masked_scatter(special_image_mask,
image_features)`; numpy's boolean-mask assignment walks the mask row-major too).  The decoder
applies what the config does after the lookup (export/decoder.py `lookup_given`).

Every input is checked before onnxruntime runs: the tokens, past, mask and positions as
DecoderSession checks them, then the images with spec/vision.py `check_images`, the checks
and messages of every backend (an image of the wrong size or channel count, a number of
placeholders the images do not fill, placeholders without images, images for a decode
step's tokens).  A step without placeholders runs no vision graph; a decode step feeds one
token's lookup.  A LongRoPE step past the original context re-runs the whole sequence
(runtime.next_outputs) without the images, and is refused as the golden's decode refuses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmref.export.bundle import Bundle
from lmref.export.runtime import CPU, DecoderSession, open_session
from lmref.export.vision_graphs import (DECODER, EMBED, EMBED_INPUTS, EMBED_OUTPUTS, VISION, VISION_INPUTS,
                                        VISION_OUTPUTS)
from lmref.spec.config import ModelConfig
from lmref.spec.inputs import check_tokens
from lmref.spec.vision import check_images


def merge_images(config: ModelConfig, tokens: np.ndarray, lookup: np.ndarray, image_features: np.ndarray
                 ) -> np.ndarray:
    """lookup [B, S, d] with the rows of the placeholders in tokens [B, S] replaced by
    image_features [N, T, d], row-major over (batch, position), image after image (module
    docstring).  The count must match (check_images checked it)."""
    merged = lookup.copy()
    where = tokens == config.vision.image_token_id  # [B, S]
    merged[where] = image_features.reshape(-1, image_features.shape[-1])  # [N * T, d] into the masked rows
    return merged


class MultimodalSession(DecoderSession):
    """The chain in onnxruntime: `outputs`, `step` and `prefill_and_decode_outputs` take the
    tokens, and `pixel_values` for a step whose tokens hold image placeholders."""

    takes_embeds = True

    def __init__(self, decoder, embed, vision, config: ModelConfig):
        super().__init__(decoder, config)
        self.embed, self.vision = embed, vision

    def image_outputs(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """vision.onnx on checked images [N, C, H, W] (N >= 1): image_features [N, T, d_model]
        (the projector's output) and vision_features [N, T, Dv] (the tower's features)."""
        images = np.asarray(pixel_values, np.float32)
        return dict(zip(VISION_OUTPUTS, self.vision.run(VISION_OUTPUTS, {VISION_INPUTS[0]: images})))

    def inputs_embeds(self, tokens: np.ndarray, images: np.ndarray | None) -> np.ndarray:
        """[B, S, d_model]: embed.onnx's lookup of checked tokens, the placeholders' rows replaced
        by the images' features (no vision graph without images)."""
        lookup = self.embed.run(EMBED_OUTPUTS, {EMBED_INPUTS[0]: tokens})[0]  # [B, S, d_model]
        if images is None or len(images) == 0:
            return lookup
        return merge_images(self.config, tokens, lookup, self.image_outputs(images)["image_features"])

    def outputs(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray],
                position_ids: np.ndarray | None = None, pixel_values: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
        """DecoderSession.outputs of the tokens' embeddings with the images merged in: the inputs
        checked first (the module docstring), then the chain."""
        tokens, *rest = self.check_inputs(input_ids, attention_mask, past, position_ids)
        images = check_images(self.config, tokens, pixel_values)
        return self.run([self.inputs_embeds(tokens, images), *rest])

    def prefill_and_decode_outputs(self, tokens: np.ndarray, prompt_len: int, pixel_values: np.ndarray | None = None
                                   ) -> dict[str, np.ndarray]:
        """DecoderSession's, the images in the prefill; every placeholder must sit in the prompt
        (check_images with prompt_len, as the golden's decode checks)."""
        tokens = check_tokens(self.config, tokens)
        if not 1 <= prompt_len <= tokens.shape[1]:
            raise ValueError(f"prompt_len must be in [1, {tokens.shape[1]}], got {prompt_len}")
        check_images(self.config, tokens, pixel_values, prompt_len=prompt_len)
        return super().prefill_and_decode_outputs(tokens, prompt_len, pixel_values=pixel_values)


def open_chain(bundle: Bundle, provider: str = CPU, *, profile_dir: str | Path | None = None
               ) -> DecoderSession | MultimodalSession:
    """The bundle's graphs in onnxruntime on `provider`: a DecoderSession of its one decoder, or
    with a vision tower a MultimodalSession of the three.  `profile_dir`: profile the decoder
    and the vision graph (each in a folder of its own: profiles are named by their start time)."""
    graphs = {role: bundle.graph_path(role) for role in bundle.manifest["graphs"]}
    return open_graphs(bundle.config, graphs, provider, profile_dir=profile_dir)


def open_graphs(config: ModelConfig, graphs: dict[str, Path | bytes], provider: str = CPU, *,
                profile_dir: str | Path | None = None, external: dict[str, dict] | None = None
                ) -> DecoderSession | MultimodalSession:
    """open_chain's sessions of {role: a graph's path or bytes}; `external`: {role: the values of
    initializers that graph keeps as external data} (runtime.open_session)."""
    def session(role: str):
        where = None
        if profile_dir is not None and role != EMBED:
            where = Path(profile_dir) / role
            where.mkdir(parents=True, exist_ok=True)
        return open_session(graphs[role], provider, profile_dir=where, external=(external or {}).get(role))

    if config.vision is None:
        return DecoderSession(session(DECODER), config)
    return MultimodalSession(session(DECODER), session(EMBED), session(VISION), config)


def profiled_sessions(chain: DecoderSession) -> list:
    """The onnxruntime sessions open_chain profiled: the decoder, and a chain's vision graph."""
    return [chain.session] + ([chain.vision] if isinstance(chain, MultimodalSession) else [])
