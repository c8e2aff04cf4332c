"""LLaVA's image pathway (float64 golden): a CLIP ViT tower, the projector, and the merge of
the projected patches into the decoder's input embeddings (spec/MATH.md, "Vision").

Read next to Radford et al. 2021 (CLIP, section 2.4 and OpenAI's clip/model.py
`VisionTransformer`) and Liu et al. 2023 (LLaVA-1.5, section 3.2).  For N images [N, C, H, W]
of a grid of g x g patches of p x p pixels, width Dv:

    patches   [N, g*g, C*p*p]     patch (r, c) is row r*g + c (row-major over the grid); its
                                  pixels in (channel, row, column) order: the convolution's
                                  weight [Dv, C, p, p] flattened
    x         [N, 1 + g*g, Dv]    [class_embed; patches @ patch_embed] + positions
    x         = pre_norm(x)                                  (CLIP's ln_pre; hidden state 0)
    x         = x + attn(attn_norm(x)); x = x + mlp(mlp_norm(x))   per layer (hidden state i + 1):
                bidirectional multi-head attention with biases, scale head_dim^-0.5;
                mlp = fc2(act(fc1(x))) with biases, act = vision.activation (CLIP: quick_gelu)
    features  = hidden_states[feature_layer]  ([:, 1:] for "drop_class")  [N, T, Dv]
    projected = act_p(features @ w1 + b1) @ w2 + b2           [N, T, d_model]

The decoder's input: the token embedding rows of the image placeholders are replaced, in
row-major order over (batch, position), by the projected patches of the images in order
(transformers `LlavaModel.forward`: `inputs_embeds.masked_scatter(special_image_mask,
image_features)`); whatever the config does to embeddings next (a norm, a scale, learned
positions) applies to these rows as to any other.
"""

from __future__ import annotations

import numpy as np

from lmref.impl_numpy.attention import softmax
from lmref.impl_numpy.mlp import ACTIVATIONS
from lmref.impl_numpy.norms import layer_norm
from lmref.spec.config import ModelConfig, VisionConfig


def _norm(params: dict, prefix: str, x: np.ndarray, eps: float) -> np.ndarray:
    """A LayerNorm with weight and bias (every norm of the CLIP tower)."""
    return layer_norm(x, eps) * params[f"{prefix}.weight"] + params[f"{prefix}.bias"]


def patchify(v: VisionConfig, images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, g*g, C*p*p]: the patches row-major over the grid, each flattened in
    (channel, row, column) order."""
    n, c, g, p = images.shape[0], v.n_channels, v.grid, v.patch_size
    x = images.reshape(n, c, g, p, g, p)  # [N, C, gr, pr, gc, pc]
    x = x.transpose(0, 2, 4, 1, 3, 5)  # [N, gr, gc, C, pr, pc]
    return x.reshape(n, g * g, c * p * p)


def embed_patches(v: VisionConfig, params: dict, images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> hidden state 0 [N, 1 + g*g, Dv]: class token and patches, positions, pre-norm."""
    patches = patchify(v, images) @ params["vision.patch_embed"]  # [N, g*g, Dv]
    cls = np.broadcast_to(params["vision.class_embed"], (len(images), 1, v.d_model))  # [N, 1, Dv]
    x = np.concatenate([cls, patches], axis=1) + params["vision.positions"]  # [N, 1 + g*g, Dv]
    return _norm(params, "vision.pre_norm", x, v.norm_eps)


def tower_attention(v: VisionConfig, params: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    """Bidirectional MHA with biases: [N, L, Dv] -> [N, L, Dv] (CLIP `CLIPAttention`)."""
    n, length, hd = x.shape[0], x.shape[1], v.head_dim

    def heads(name: str) -> np.ndarray:
        y = x @ params[f"{prefix}.w{name}"] + params[f"{prefix}.b{name}"]  # [N, L, Dv]
        return y.reshape(n, length, v.n_heads, hd)  # [N, L, H, hd]

    q, k, vv = heads("q"), heads("k"), heads("v")
    scores = np.einsum("nqhd,nkhd->nhqk", q, k) * hd**-0.5  # [N, H, L, L]: every key visible
    out = np.einsum("nhqk,nkhd->nqhd", softmax(scores), vv)  # [N, L, H, hd]
    return out.reshape(n, length, v.d_model) @ params[f"{prefix}.wo"] + params[f"{prefix}.bo"]


def tower_mlp(v: VisionConfig, params: dict, prefix: str, x: np.ndarray) -> np.ndarray:
    """fc2(act(fc1(x))) with biases: [N, L, Dv] -> [N, L, Dv]."""
    hidden = ACTIVATIONS[v.activation](x @ params[f"{prefix}.w_up"] + params[f"{prefix}.b_up"])  # [N, L, Fv]
    return hidden @ params[f"{prefix}.w_down"] + params[f"{prefix}.b_down"]


def tower_layer(v: VisionConfig, params: dict, i: int, x: np.ndarray, capture: dict | None) -> np.ndarray:
    """One pre-norm encoder layer (CLIP `ResidualAttentionBlock`, transformers `CLIPEncoderLayer`)."""
    p = f"vision.layers.{i}"
    a = tower_attention(v, params, f"{p}.attn", _norm(params, f"{p}.attn_norm", x, v.norm_eps))
    x = x + a
    m = tower_mlp(v, params, f"{p}.mlp", _norm(params, f"{p}.mlp_norm", x, v.norm_eps))
    x = x + m
    if capture is not None:
        capture |= {f"{p}.attn": a, f"{p}.mlp": m, f"{p}.out": x}
    return x


def image_features(config: ModelConfig, params: dict, images: np.ndarray, capture: dict | None = None
                   ) -> np.ndarray:
    """[N, C, H, W] -> the projected features [N, T, d_model] that replace the placeholders.
    Only the layers up to the feature layer run: the later ones cannot change the features."""
    v = config.vision
    x = embed_patches(v, params, images)  # hidden state 0
    if capture is not None:
        capture["vision.embed"] = x
    for i in range(v.layers_run):  # hidden state i + 1
        x = tower_layer(v, params, i, x, capture)
    features = select_features(v, x)  # [N, T, Dv]
    projected = project(config, params, features)
    if capture is not None:
        capture |= {"vision.features": features, "projector": projected}
    return projected


def select_features(v: VisionConfig, hidden: np.ndarray) -> np.ndarray:
    """[N, 1 + g*g, Dv] -> [N, T, Dv]: the class token (position 0) dropped for "drop_class"
    (transformers `LlavaModel.get_image_features`: `selected_image_feature[:, 1:]`)."""
    return hidden[:, 1:] if v.feature_strategy == "drop_class" else hidden


def project(config: ModelConfig, params: dict, features: np.ndarray) -> np.ndarray:
    """LLaVA-1.5's "mlp2x_gelu" projector: [N, T, Dv] -> [N, T, d_model]."""
    v = config.vision
    h = features @ params["projector.w1"]
    if v.projector_bias:
        h = h + params["projector.b1"]
    h = ACTIVATIONS[v.projector_activation](h) @ params["projector.w2"]
    return h + params["projector.b2"] if v.projector_bias else h


def merge_images(config: ModelConfig, tokens: np.ndarray, embeddings: np.ndarray, projected: np.ndarray
                 ) -> np.ndarray:
    """The token embeddings [B, S, d_model] with the placeholders' rows replaced by the images'
    features [N, T, d_model], in row-major order over (batch, position)."""
    merged = embeddings.copy()
    where = tokens == config.vision.image_token_id  # [B, S]
    merged[where] = projected.reshape(-1, config.d_model).astype(merged.dtype)  # [N*T, d_model], image by image
    return merged
