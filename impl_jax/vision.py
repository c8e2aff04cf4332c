"""LLaVA's image pathway (JAX twin of impl_numpy/vision.py): the CLIP ViT tower, the projector,
and the merge of the projected patches into the decoder's input embeddings (spec/MATH.md,
"Vision"; the parameter layout and capture names: spec/vision.py).

For N images [N, C, H, W] of a g x g grid of p x p patches, tower width Dv, T tokens per image:

    x         = conv(images, patch_embed as [Dv, C, p, p], stride p)   [N, g, g, Dv] -> [N, g*g, Dv]
    x         = [class_embed; x] + positions                          [N, 1 + g*g, Dv]
    hidden_0  = pre_norm(x)
    hidden_i+1 = h + attn(attn_norm(h)), then h + mlp(mlp_norm(h))      (pre-norm encoder layer)
    features  = hidden_{feature_layer}, the class token dropped for "drop_class"     [N, T, Dv]
    projected = act_p(features @ w1 (+ b1)) @ w2 (+ b2)                [N, T, d_model]

Unlike the golden, which cuts the image into patches and multiplies, the patch embedding here is
the strided convolution CLIP runs (transformers 5.23 `CLIPVisionEmbeddings.patch_embedding`:
`nn.Conv2d(C, Dv, kernel_size=p, stride=p, bias=False)`, then `flatten(2).transpose(1, 2)`,
so the grid is read row-major); `patch_embed` [C*p*p, Dv] is that weight flattened and
transposed (spec/vision.py).  The attention is CLIP's bidirectional multi-head attention with
biases, scaled by head_dim^-0.5 (transformers `CLIPAttention`); the encoder layer is
`CLIPEncoderLayer` (OpenAI clip/model.py `ResidualAttentionBlock`).

The merge is traceable with fixed shapes (no boolean-mask assignment): the k-th placeholder in
row-major order over (batch, position) reads row k of the images' rows stacked image after
image, k from a cumulative sum of the placeholder mask (transformers `LlavaModel.forward`:
`inputs_embeds.masked_scatter(special_image_mask, image_features)`).  The host (impl_jax/
model.py, spec.vision.check_images) has checked that the placeholders number N * T.

Low precision as in the decoder: LayerNorm statistics and affine, scores and softmax in at least
float32, cast back to the activations' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lmref.impl_jax.mlp import ACTIVATIONS
from lmref.impl_jax.norms import layer_norm, upcast
from lmref.spec.config import ModelConfig, VisionConfig


def tower_norm(params: dict, prefix: str, x: jax.Array, eps: float) -> jax.Array:
    """A LayerNorm with weight and bias (every norm of the CLIP tower), in at least float32."""
    wide = upcast(x)
    y = layer_norm(wide, eps) * params[f"{prefix}.weight"].astype(wide.dtype) + params[f"{prefix}.bias"]
    return y.astype(x.dtype)


def patch_embeddings(v: VisionConfig, params: dict, images: jax.Array) -> jax.Array:
    """[N, C, H, W] -> [N, g*g, Dv]: the patch convolution, grid cells row-major."""
    kernel = params["vision.patch_embed"].T.reshape(v.d_model, v.n_channels, v.patch_size, v.patch_size)  # OIHW
    out = jax.lax.conv_general_dilated(
        images.astype(kernel.dtype), kernel, window_strides=(v.patch_size, v.patch_size), padding="VALID",
        dimension_numbers=("NCHW", "OIHW", "NHWC"))  # [N, g, g, Dv]
    return out.reshape(out.shape[0], v.n_patches, v.d_model)  # [N, g*g, Dv], cell (r, c) at r*g + c


def embed_images(v: VisionConfig, params: dict, images: jax.Array) -> jax.Array:
    """[N, C, H, W] -> hidden state 0 [N, 1 + g*g, Dv]: class token first, positions, pre-norm."""
    patches = patch_embeddings(v, params, images)  # [N, g*g, Dv]
    cls = jnp.broadcast_to(params["vision.class_embed"], (patches.shape[0], 1, v.d_model))  # [N, 1, Dv]
    x = jnp.concatenate([cls, patches], axis=1) + params["vision.positions"]  # [N, 1 + g*g, Dv]
    return tower_norm(params, "vision.pre_norm", x, v.norm_eps)


def tower_attention(v: VisionConfig, params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """Bidirectional multi-head attention with biases: [N, L, Dv] -> [N, L, Dv]."""
    def heads(name: str) -> jax.Array:
        y = x @ params[f"{prefix}.w{name}"] + params[f"{prefix}.b{name}"]  # [N, L, Dv]
        return y.reshape(*y.shape[:2], v.n_heads, v.head_dim)  # [N, L, H, hd]

    q, k, values = heads("q"), heads("k"), heads("v")
    wide = jnp.promote_types(q.dtype, jnp.float32)
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, preferred_element_type=wide) * v.head_dim**-0.5  # [N, H, L, L]
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)  # no mask: every patch sees every patch
    out = jnp.einsum("nhqk,nkhd->nqhd", probs, values)  # [N, L, H, hd]
    out = out.reshape(*out.shape[:2], v.d_model)  # [N, L, H*hd]
    return out @ params[f"{prefix}.wo"] + params[f"{prefix}.bo"]


def tower_mlp(v: VisionConfig, params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """fc2(act(fc1(x))) with biases: [N, L, Dv] -> [N, L, Fv] -> [N, L, Dv]."""
    hidden = ACTIVATIONS[v.activation](x @ params[f"{prefix}.w_up"] + params[f"{prefix}.b_up"])  # [N, L, Fv]
    return hidden @ params[f"{prefix}.w_down"] + params[f"{prefix}.b_down"]


def tower_layer(v: VisionConfig, params: dict, i: int, x: jax.Array, captured: dict | None) -> jax.Array:
    """Encoder layer i, pre-norm: [N, L, Dv] -> [N, L, Dv]."""
    p = f"vision.layers.{i}"
    a = tower_attention(v, params, f"{p}.attn", tower_norm(params, f"{p}.attn_norm", x, v.norm_eps))
    x = x + a
    m = tower_mlp(v, params, f"{p}.mlp", tower_norm(params, f"{p}.mlp_norm", x, v.norm_eps))
    x = x + m
    if captured is not None:
        captured |= {f"{p}.attn": a, f"{p}.mlp": m, f"{p}.out": x}
    return x


def project(config: ModelConfig, params: dict, features: jax.Array) -> jax.Array:
    """LLaVA-1.5's two-layer projector ("mlp2x_gelu", transformers `LlavaMultiModalProjector`):
    [N, T, Dv] -> [N, T, d_model] -> [N, T, d_model]."""
    v = config.vision
    h = features @ params["projector.w1"]  # [N, T, d_model]
    if v.projector_bias:
        h = h + params["projector.b1"]
    h = ACTIVATIONS[v.projector_activation](h) @ params["projector.w2"]  # [N, T, d_model]
    return h + params["projector.b2"] if v.projector_bias else h


def image_features(config: ModelConfig, params: dict, images: jax.Array, captured: dict | None) -> jax.Array:
    """[N, C, H, W] -> the projected features [N, T, d_model].  Only the layers up to the feature
    layer run (`layers_run`): the later ones exist in a checkpoint but reach no output."""
    v = config.vision
    x = embed_images(v, params, images)  # hidden state 0
    if captured is not None:
        captured["vision.embed"] = x
    for i in range(v.layers_run):  # hidden state i + 1
        x = tower_layer(v, params, i, x, captured)
    features = x[:, 1:] if v.feature_strategy == "drop_class" else x  # [N, T, Dv]
    projected = project(config, params, features)
    if captured is not None:
        captured |= {"vision.features": features, "projector": projected}
    return projected


def merge_images(config: ModelConfig, tokens: jax.Array, embeddings: jax.Array, projected: jax.Array
                 ) -> jax.Array:
    """The embeddings [B, S, d] with the placeholders' rows replaced by the images' rows
    [N, T, d], in row-major order over (batch, position); shapes are static, so it jits."""
    batch, seq, d = embeddings.shape
    rows = projected.reshape(-1, d).astype(embeddings.dtype)  # [N*T, d], image after image
    if rows.shape[0] == 0:  # no image (and, checked, no placeholder)
        return embeddings
    is_image = (tokens == config.vision.image_token_id).reshape(-1)  # [B*S], row-major
    order = jnp.cumsum(is_image.astype(jnp.int32)) - 1  # [B*S]: placeholder k -> image row k
    picked = jnp.take(rows, jnp.clip(order, 0, rows.shape[0] - 1), axis=0)  # [B*S, d]
    merged = jnp.where(is_image[:, None], picked, embeddings.reshape(-1, d))  # [B*S, d]
    return merged.reshape(batch, seq, d)
