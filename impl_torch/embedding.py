"""The input embedding, torch twin of impl_numpy/model.py `embed`: the token lookup, the image
features in the placeholders' rows (impl_torch/vision.py), BLOOM's norm, Gemma's scale, learned
positions, in that order (spec/MATH.md, "Block" and "Vision")."""

from __future__ import annotations

import torch
from torch import nn

from lmref.impl_torch.norms import Norm
from lmref.impl_torch.vision import merge_images
from lmref.spec.config import ModelConfig


class Embedding(nn.Module):
    """tokens [B, S] at positions [P, S] -> [B, S, d_model].

    With images (their projected features [N, T, d_model]) the rows of the image placeholders
    are replaced right after the lookup (transformers `LlavaModel.forward` scatters them into
    `inputs_embeds` before the language model), so whatever follows applies to them as to
    any token.

    With embedding_scale "sqrt_d_model" (Gemma) the token embeddings are multiplied by
    sqrt(d_model) rounded to the model's dtype (HF `GemmaModel`: `normalizer =
    torch.tensor(hidden_size**0.5, dtype=hidden_states.dtype)`; Google's `gemma`:
    `x * jnp.sqrt(embed_dim).astype(x.dtype)`).

    With embedding_norm (BLOOM) the config's norm `norm` (parameters `embed.norm.weight`,
    `.bias`) normalises the looked-up embeddings first, before any scale or position
    (transformers `BloomModel.forward`: `word_embeddings_layernorm(inputs_embeds)`;
    Megatron-DeepSpeed `VocabParallelEmbedding.forward`: `self.norm(output)` inside the token
    embedding, before `Embedding.forward` adds positions).
    """

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.tokens = nn.Embedding(config.vocab_size, config.d_model, **kw)
        learned = config.position == "learned"
        self.positions = nn.Embedding(config.max_seq_len, config.d_model, **kw) if learned else None
        self.norm = Norm.of(config, dtype, device) if config.embedding_norm else None  # w = 1, b = 0 at first
        self.scale = config.d_model**0.5 if config.embedding_scale == "sqrt_d_model" else None
        self.image_token_id = None if config.vision is None else config.vision.image_token_id

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, images: torch.Tensor | None = None
                ) -> torch.Tensor:
        h = self.tokens(tokens)  # [B, S, d_model]
        if images is not None:
            h = merge_images(tokens, h, self.image_token_id, images)
        if self.norm is not None:
            h = self.norm(h)
        if self.scale is not None:
            h = h * h.new_tensor(self.scale)  # a 0-d tensor: the scale rounded to h's dtype
        return h if self.positions is None else h + self.positions(positions)  # + [P, S, d_model]
