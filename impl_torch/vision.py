"""LLaVA's image pathway as torch modules, twin of impl_numpy/vision.py: a CLIP ViT tower, the
projector, and the merge of the projected patches into the token embeddings (spec/MATH.md,
"Vision"; the parameter layout and capture names: spec/vision.py).

Read next to Radford et al. 2021 (CLIP; OpenAI's clip/model.py `VisionTransformer`),
transformers 5.23 models/clip/modeling_clip.py (`CLIPVisionEmbeddings`, `CLIPEncoderLayer`)
and models/llava/modeling_llava.py (`LlavaMultiModalProjector`, `LlavaModel.forward`).  For N
images [N, C, H, W] on a g x g grid of p x p patches, tower width Dv:

    x        = [class_embed; patch_embed(patchify(images))] + positions   [N, 1 + g*g, Dv]
    hidden_0 = pre_norm(x)
    hidden_{i+1} = h + attn(attn_norm(h)), then h + mlp(mlp_norm(h))  (h = hidden_i; pre-norm,
               bidirectional attention with biases, fc2(act(fc1(.))) with biases)
    features = hidden_{feature_layer}, class token dropped for "drop_class"   [N, T, Dv]
    image    = w2(act_p(w1(features)))                                       [N, T, d_model]

The patch embedding is an unfold and a matmul.  `patchify` cuts [N, C, H, W] into
[N, g*g, C*p*p] with a view and a permute (stride = kernel: the windows do not overlap, nothing
is copied twice): the patches row-major over the grid, each flattened in (channel, row,
column) order.  `patch_embed` is an nn.Linear(C*p*p, Dv, bias=False), whose weight
[Dv, C*p*p] is the canonical `vision.patch_embed` [C*p*p, Dv] transposed, like every
projection of the twin.  This is CLIP's `Conv2d(C, Dv, kernel_size=p, stride=p, bias=False)`
(transformers `CLIPVisionEmbeddings.patch_embedding`; clip/model.py `conv1`) with the conv
weight `patch_embed.weight.view(Dv, C, p, p)`: a stride-p convolution with a p x p kernel is
one dot product per patch over the (channel, row, column) entries of its window, and
`conv(x).flatten(2).transpose(1, 2)` lists the patches row-major (tests/torch/test_vision.py
checks the two against each other).  `F.unfold(images, p, stride=p)` gives the same
[N, C*p*p, g*g]; the view and permute export as a plain Reshape and Transpose.

The tower's attention sees every token (no mask, CLIP's vision encoder passes none) and runs
on the model's kernel (`attn_impl`, impl_torch/attention.py): SDPA without a mask, or the
eager q k^T, softmax in float32 at least, @ v.  Its LayerNorms always have weight and bias,
whatever the decoder's norms are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmref.impl_torch.mlp import ACTIVATIONS
from lmref.impl_torch.norms import Norm, upcast
from lmref.spec.config import ModelConfig, VisionConfig


def tower_norm(v: VisionConfig, dtype: torch.dtype, device) -> Norm:
    """A LayerNorm over Dv with weight and bias (CLIP's pre_layrnorm, layer_norm1/2, post_layernorm)."""
    return Norm("layernorm", v.d_model, v.norm_eps, weight=True, bias=True, unit_offset=False, dtype=dtype,
                device=device)


def patchify(v: VisionConfig, images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, g*g, C*p*p]: patch (r, c) at row r*g + c, its pixels in (channel, row,
    column) order (the module docstring)."""
    n, c, g, p = images.shape[0], v.n_channels, v.grid, v.patch_size
    x = images.reshape(n, c, g, p, g, p)  # [N, C, grid row, pixel row, grid col, pixel col]
    x = x.permute(0, 2, 4, 1, 3, 5)  # [N, grid row, grid col, C, pixel row, pixel col]
    return x.reshape(n, g * g, c * p * p)


def bidirectional_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                            attn_impl: str) -> torch.Tensor:
    """softmax(q k^T * scale) v over every key: q, k, v [N, H, L, hd] -> [N, H, L, hd]."""
    if attn_impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)  # no mask, not causal
    # q and k upcast before the product (spec/MATH.md, "Precision policy"); matmuls, not einsums:
    # onnxruntime runs MatMul faster (impl_torch/attention.py)
    scores = (upcast(q) @ upcast(k).transpose(-1, -2)) * scale  # [N, H, L, hd] @ [N, H, hd, L] -> [N, H, L, L]
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v  # [N, H, L, L] @ [N, H, L, hd]


class TowerAttention(nn.Module):
    """Multi-head self-attention with biases, scale head_dim^-0.5 (transformers `CLIPAttention`):
    [N, L, Dv] -> [N, L, Dv]."""

    def __init__(self, v: VisionConfig, dtype: torch.dtype, device=None):
        super().__init__()
        self.n_heads, self.head_dim = v.n_heads, v.head_dim
        kw = dict(bias=True, dtype=dtype, device=device)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(v.d_model, v.d_model, **kw) for _ in range(4))

    def _heads(self, y: torch.Tensor) -> torch.Tensor:
        """[N, L, Dv] -> [N, H, L, hd]."""
        return y.view(*y.shape[:2], self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_impl: str) -> torch.Tensor:
        q, k, v = self._heads(self.wq(x)), self._heads(self.wk(x)), self._heads(self.wv(x))  # [N, H, L, hd]
        out = bidirectional_attention(q, k, v, self.head_dim**-0.5, attn_impl)  # [N, H, L, hd]
        return self.wo(out.transpose(1, 2).reshape(x.shape))  # [N, L, H * hd] -> [N, L, Dv]


class TowerMLP(nn.Module):
    """fc2(act(fc1(x))) with biases (transformers `CLIPMLP`): [N, L, Dv] -> [N, L, Dv]."""

    def __init__(self, v: VisionConfig, dtype: torch.dtype, device=None):
        super().__init__()
        kw = dict(bias=True, dtype=dtype, device=device)
        self.act = ACTIVATIONS[v.activation]
        self.w_up = nn.Linear(v.d_model, v.d_ff, **kw)
        self.w_down = nn.Linear(v.d_ff, v.d_model, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(self.act(self.w_up(x)))  # [N, L, Fv] -> [N, L, Dv]


class TowerLayer(nn.Module):
    """One pre-norm encoder layer (transformers `CLIPEncoderLayer`, clip/model.py
    `ResidualAttentionBlock`): [N, L, Dv] -> (the layer's output, its "attn", "mlp", "out")."""

    def __init__(self, v: VisionConfig, dtype: torch.dtype, device=None):
        super().__init__()
        self.attn_norm, self.attn = tower_norm(v, dtype, device), TowerAttention(v, dtype, device)
        self.mlp_norm, self.mlp = tower_norm(v, dtype, device), TowerMLP(v, dtype, device)

    def forward(self, x: torch.Tensor, attn_impl: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a = self.attn(self.attn_norm(x), attn_impl)
        x = x + a
        m = self.mlp(self.mlp_norm(x))
        x = x + m
        return x, {"attn": a, "mlp": m, "out": x}


class VisionTower(nn.Module):
    """The CLIP ViT: images [N, C, H, W] -> the features of `feature_layer` [N, T, Dv].

    Every layer is a module, also those past the feature layer, and the post-LayerNorm (CLIP's
    pooled output, which LLaVA never reads): a checkpoint holds them (spec/vision.py).  Only
    the `layers_run` layers up to the feature layer run; the rest cannot change the features.
    `Transformer(config)` draws the class token and the positions as OpenAI's CLIP does
    (clip/model.py `VisionTransformer`: `scale * torch.randn(...)`, scale = width^-0.5)."""

    def __init__(self, v: VisionConfig, dtype: torch.dtype, device=None):
        super().__init__()
        self.v = v
        kw = dict(dtype=dtype, device=device)
        self.patch_embed = nn.Linear(v.n_channels * v.patch_size**2, v.d_model, bias=False, **kw)
        self.class_embed = nn.Parameter(torch.randn(v.d_model, **kw) * v.d_model**-0.5)
        self.positions = nn.Parameter(torch.randn(v.n_patches + 1, v.d_model, **kw) * v.d_model**-0.5)
        self.pre_norm = tower_norm(v, dtype, device)
        self.layers = nn.ModuleList(TowerLayer(v, dtype, device) for _ in range(v.n_layers))
        self.post_norm = tower_norm(v, dtype, device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> hidden state 0 [N, 1 + g*g, Dv]: class token, patches, positions, pre-norm."""
        patches = self.patch_embed(patchify(self.v, images))  # [N, g*g, Dv]
        cls = self.class_embed.expand(images.shape[0], 1, self.v.d_model)  # [N, 1, Dv]
        return self.pre_norm(torch.cat([cls, patches], dim=1) + self.positions)  # [N, 1 + g*g, Dv]

    def forward(self, images: torch.Tensor, attn_impl: str, capture: dict | None = None) -> torch.Tensor:
        x = self.embed(images)
        if capture is not None:
            capture["vision.embed"] = x
        for i, layer in enumerate(self.layers[: self.v.layers_run]):  # hidden state i + 1
            x, parts = layer(x, attn_impl)
            if capture is not None:
                capture |= {f"vision.layers.{i}.{name}": value for name, value in parts.items()}
        features = x[:, 1:] if self.v.feature_strategy == "drop_class" else x  # [N, T, Dv]
        if capture is not None:
            capture["vision.features"] = features
        return features


class Projector(nn.Module):
    """LLaVA-1.5's "mlp2x_gelu" (transformers `LlavaMultiModalProjector`: linear_1, act,
    linear_2, biases per `multimodal_projector_bias`): [N, T, Dv] -> [N, T, d_model]."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        v = config.vision
        kw = dict(bias=v.projector_bias, dtype=dtype, device=device)
        self.w1 = nn.Linear(v.d_model, config.d_model, **kw)
        self.act = ACTIVATIONS[v.projector_activation]
        self.w2 = nn.Linear(config.d_model, config.d_model, **kw)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(features)))  # [N, T, d_model]


def merge_images(tokens: torch.Tensor, embeddings: torch.Tensor, image_token_id: int,
                 projected: torch.Tensor) -> torch.Tensor:
    """The token embeddings [B, S, d] with the placeholders' rows replaced by the images' rows
    [N, T, d], in row-major order over (batch, position), image after image (transformers
    `LlavaModel.forward`: `inputs_embeds.masked_scatter(special_image_mask, image_features)`;
    masked_scatter fills the masked entries in row-major order).  Differentiable in both."""
    where = (tokens == image_token_id)[..., None].expand_as(embeddings)  # [B, S, d]
    return embeddings.masked_scatter(where, projected.to(embeddings.dtype))

