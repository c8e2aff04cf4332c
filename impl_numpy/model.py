"""The decoder-only LM: embeddings, a stack of pre-norm blocks, the head (float64 golden).

Each layer is built from its plan (spec/plan.py); a config that needs a feature the golden
does not compute (impl_numpy/features.py) is refused with UnsupportedFeature, by name.

    h = embed_norm(embed.tokens[tokens]) (* sqrt(d_model), Gemma) (+ embed.positions[p])
                                               (embed_norm: BLOOM's embedding_norm; else none)
                                               (images: their projected patches replace the
                                               placeholders' rows of the lookup, impl_numpy/vision.py)
    for each layer, by the plan's norm placement (spec/MATH.md, "Block"); a "moe" layer's
    mlp is the mixture of experts (impl_numpy/moe.py):
        pre            h = h + attn(attn_norm(h));                 h = h + mlp(mlp_norm(h))
        sandwich       h = h + attn_post_norm(attn(attn_norm(h))); same for the MLP
        post_sublayer  h = h + attn_post_norm(attn(h));            same for the MLP
    logits = final_norm(h) @ W_head (+ b)      W_head = embed.tokens^T when tied
    logits = logits * logit_scale              (Cohere; PaLM's d_model^-0.5)
    logits = c tanh(logits / c)                (final_logit_softcap c, Gemma 2)

`capture`, when a dict is given, receives the named intermediates of spec/captures.py, in
the order the computation produces them, so a mismatch can be traced to the first
component that diverges.
"""

from __future__ import annotations

import math

import numpy as np

from lmref.impl_numpy.attention import attention
from lmref.impl_numpy.cache import KVCache
from lmref.impl_numpy.features import FEATURES
from lmref.impl_numpy.mlp import mlp
from lmref.impl_numpy.moe import auxiliary_loss, moe
from lmref.impl_numpy.norms import apply_norm
from lmref.impl_numpy.vision import image_features, merge_images
from lmref.spec.config import ModelConfig
from lmref.spec.errors import InputError
from lmref.spec.features import check_supported
from lmref.spec.inputs import check_tokens
from lmref.spec.params import check_params
from lmref.spec.plan import LayerPlan, crosses_original_context, layer_plan
from lmref.spec.vision import check_images

BACKEND = "numpy"


def embed(config: ModelConfig, params: dict, tokens: np.ndarray, positions: np.ndarray,
          images: np.ndarray | None = None) -> np.ndarray:
    """tokens [B, S] -> [B, S, d_model]; `images` [N, T, d_model] (projected) fill the placeholders."""
    h = params["embed.tokens"][tokens]
    if images is not None:
        h = merge_images(config, tokens, h, images)
    if config.embedding_norm:  # BLOOM: the config's norm right after the lookup (spec/MATH.md, "Block")
        h = apply_norm(config, params, "embed.norm", h)
    if config.embedding_scale == "sqrt_d_model":  # Gemma: the table itself stays unscaled for the head
        h = h * math.sqrt(config.d_model)  # a Python float: float32 params stay float32
    if config.position == "learned":
        h = h + params["embed.positions"][positions][None, :, :]
    return h


def sublayer(config: ModelConfig, plan: LayerPlan, params: dict, name: str, h: np.ndarray, compute) -> np.ndarray:
    """What sublayer `name` ("attn" or "mlp") of the layer adds to the residual stream, with
    its norms where the plan puts them: `compute` maps the sublayer's input to its output."""
    p = f"layers.{plan.index}"
    x = h if plan.norms == "post_sublayer" else apply_norm(config, params, f"{p}.{name}_norm", h)
    out = compute(x)
    if plan.norms in ("sandwich", "post_sublayer"):
        out = apply_norm(config, params, f"{p}.{name}_post_norm", out)
    return out


def feed_forward(config: ModelConfig, plan: LayerPlan, params: dict, x: np.ndarray, capture: dict | None
                 ) -> np.ndarray:
    """The layer's MLP, dense or a mixture of experts, on its (normed) input x [B, S, d_model]."""
    p = f"layers.{plan.index}"
    return moe(config, params, f"{p}.mlp", x, capture, p) if plan.mlp == "moe" else mlp(config, params, f"{p}.mlp", x)


def block(config: ModelConfig, plan: LayerPlan, params: dict, h: np.ndarray, positions: np.ndarray,
          cache: KVCache | None, capture: dict | None) -> np.ndarray:
    """One layer of the stack: [B, S, d_model] -> [B, S, d_model]."""
    if config.parallel_residual:
        return parallel_block(config, plan, params, h, positions, cache, capture)
    p = f"layers.{plan.index}"
    a = sublayer(config, plan, params, "attn", h,
                 lambda x: attention(config, plan, params, f"{p}.attn", x, positions, cache))
    h = h + a
    if capture is not None:
        capture[f"{p}.attn"] = a
    m = sublayer(config, plan, params, "mlp", h, lambda x: feed_forward(config, plan, params, x, capture))
    h = h + m
    if capture is not None:
        capture |= {f"{p}.mlp": m, f"{p}.out": h}
    return h


def parallel_block(config: ModelConfig, plan: LayerPlan, params: dict, h: np.ndarray, positions: np.ndarray,
                   cache: KVCache | None, capture: dict | None) -> np.ndarray:
    """A parallel layer: attention and MLP both read the layer's input, and both add to it,

        h + attn(attn_norm(h)) + mlp(mlp_norm(h))       two norms (GPT-NeoX / Pythia, Falcon-40B)
        h + attn(attn_norm(h)) + mlp(attn_norm(h))      shared_attn_norm (GPT-J, Phi-1.5/2, PaLM,
                                                        Falcon-7B)

    (Wang & Komatsuzaki 2021, GPT-J; Black et al. 2022, GPT-NeoX-20B section 2.1; Chowdhery et
    al. 2022, PaLM section 2; transformers `GPTNeoXLayer` with use_parallel_residual,
    `GPTJBlock`).  Only "pre" norms (spec/validation.py)."""
    p = f"layers.{plan.index}"
    x_attn = apply_norm(config, params, f"{p}.attn_norm", h)
    x_mlp = x_attn if config.shared_attn_norm else apply_norm(config, params, f"{p}.mlp_norm", h)
    a = attention(config, plan, params, f"{p}.attn", x_attn, positions, cache)
    if capture is not None:  # in the order of capture_names: attn, a mixture's router, mlp, out
        capture[f"{p}.attn"] = a
    m = feed_forward(config, plan, params, x_mlp, capture)
    h = h + a + m
    if capture is not None:
        capture |= {f"{p}.mlp": m, f"{p}.out": h}
    return h


def head(config: ModelConfig, params: dict, h: np.ndarray) -> np.ndarray:
    """[B, S, d_model] -> logits [B, S, vocab]."""
    weight = params["embed.tokens"].T if config.tie_embeddings else params["lm_head.weight"]
    logits = h @ weight  # [B, S, d_model] @ [d_model, vocab]
    if config.lm_head_bias:
        logits = logits + params["lm_head.bias"]
    if config.logit_scale != 1.0:  # Cohere (`CohereForCausalLM`: logits * logit_scale); PaLM section 5
        logits = logits * config.logit_scale  # a Python float: float32 logits stay float32
    if config.final_logit_softcap is not None:  # Gemma 2
        logits = config.final_logit_softcap * np.tanh(logits / config.final_logit_softcap)
    return logits


def forward(config: ModelConfig, params: dict, tokens: np.ndarray, *, pixel_values: np.ndarray | None = None,
            cache: KVCache | None = None, capture: dict | None = None) -> np.ndarray:
    """Logits [B, S, vocab] for tokens [B, S]; with a cache, the tokens follow its contents.
    `pixel_values` [N, C, H, W]: the images whose features fill the image placeholders."""
    check_supported(config, BACKEND, FEATURES)
    past = cache.length if cache is not None else 0
    tokens = check_tokens(config, tokens, past_len=past)
    pixel_values = check_images(config, tokens, pixel_values)
    if cache is not None and cache.batch not in (None, tokens.shape[0]):
        raise InputError(f"tokens have batch {tokens.shape[0]} but the KV cache holds batch {cache.batch}")
    check_params(config, params)
    if cache is not None and crosses_original_context(config, past, past + tokens.shape[1]):
        return rerun(config, params, tokens, cache, capture)
    positions = past + np.arange(tokens.shape[1])
    images = None if pixel_values is None else image_features(config, params, pixel_values, capture)
    h = embed(config, params, tokens, positions, images)
    if capture is not None:
        capture["embed"] = h
    for plan in layer_plan(config):
        h = block(config, plan, params, h, positions, cache, capture)
    h = apply_norm(config, params, "final_norm", h)
    logits = head(config, params, h)
    if cache is not None:
        cache.take_tokens(tokens)
    if capture is not None:
        capture |= {"final_norm": h, "logits": logits}
    return logits


def rerun(config: ModelConfig, params: dict, tokens: np.ndarray, cache: KVCache, capture: dict | None) -> np.ndarray:
    """The step's logits [B, S, vocab] when it takes a LongRoPE sequence past its original context
    (spec/plan.py `crosses_original_context`): the cached tokens and the step's run again from an
    empty cache, which `cache` then holds; `capture` gets the step's S positions."""
    fresh, captured = KVCache.empty(config), ({} if capture is not None else None)
    logits = forward(config, params, np.concatenate([cache.tokens, tokens], axis=1), cache=fresh, capture=captured)
    cache.refill(fresh)
    if capture is not None:
        capture |= {name: value[:, -tokens.shape[1]:] for name, value in captured.items()}
    return logits[:, -tokens.shape[1]:]


def decode(config: ModelConfig, params: dict, tokens: np.ndarray, prompt_len: int, *,
           pixel_values: np.ndarray | None = None) -> np.ndarray:
    """Logits [B, S, vocab]: one prefill of the first `prompt_len` tokens (and the images, whose
    placeholders must all be in it), then one token at a time through the KV cache
    (teacher-forced).  Step t's logits are those of `forward` on tokens 0..t (spec/MATH.md,
    "Decode"): `forward` on the whole sequence but for LongRoPE, whose factors depend on the
    sequence's length."""
    check_supported(config, BACKEND, FEATURES)
    tokens = check_tokens(config, tokens)
    if not 1 <= prompt_len <= tokens.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {tokens.shape[1]}], got {prompt_len}")
    check_images(config, tokens, pixel_values, prompt_len=prompt_len)
    cache = KVCache.empty(config)
    steps = [forward(config, params, tokens[:, :prompt_len], pixel_values=pixel_values, cache=cache)]
    for t in range(prompt_len, tokens.shape[1]):
        steps.append(forward(config, params, tokens[:, t : t + 1], cache=cache))
    return np.concatenate(steps, axis=1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """[..., V] -> [..., V], stable in float64."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logsumexp(logits: np.ndarray) -> np.ndarray:
    """[..., V] -> [...]: log sum_v exp(logits_v), the largest logit taken out first."""
    top = logits.max(axis=-1)
    return top + np.log(np.exp(logits - top[..., None]).sum(axis=-1))


def logit_z_loss(logits: np.ndarray) -> float:
    """PaLM's auxiliary loss before its weight (Chowdhery et al. 2022, section 5, "Loss
    function": z_loss = 1e-4 * log^2 Z, Z the softmax normaliser): mean over the targets' rows
    of logsumexp(logits)^2, [B, T, V] -> a float.  Per row and averaged like the cross-entropy,
    as Google's t5x computes it (t5x/losses.py `cross_entropy_with_logits`: `z_loss *
    jax.lax.square(log_z)` added to each target's loss) and praxis (`FullSoftmax`: the sum of
    `_compute_z_loss` over the weighted targets over their total weight)."""
    return float(np.mean(logsumexp(logits) ** 2))


def loss(config: ModelConfig, params: dict, tokens: np.ndarray, *, pixel_values: np.ndarray | None = None) -> float:
    """Mean next-token cross-entropy: position t predicts token t + 1, over the B * (S - 1)
    targets but the image placeholders (LLaVA's labels are IGNORE_INDEX there); plus
    `logit_z_loss_coef` times the logit z-loss over the same rows (PaLM); plus a mixture's
    auxiliary losses over the router logits of all S positions (impl_numpy/moe.py
    `auxiliary_loss`; transformers' `labels=` loss with router logits)."""
    check_supported(config, BACKEND, FEATURES)
    tokens = check_tokens(config, tokens)
    if tokens.shape[1] < 2:
        raise ValueError(f"loss needs sequences of at least 2 tokens, got {tokens.shape[1]}")
    captured: dict = {}
    logits = forward(config, params, tokens, pixel_values=pixel_values, capture=captured)[:, :-1]  # [B, S-1, V]
    targets = tokens[:, 1:]  # [B, S-1]
    scored = np.ones(targets.shape, dtype=bool) if config.vision is None else targets != config.vision.image_token_id
    if not scored.any():
        raise ValueError("loss has no target: every next token is an image placeholder")
    logits, targets = logits[scored], targets[scored]  # [T, V], [T]: the rows with a text target
    picked = np.take_along_axis(log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    total = float(-picked.mean())
    if config.logit_z_loss_coef > 0:
        total += config.logit_z_loss_coef * logit_z_loss(logits)
    if config.moe is not None:
        total += auxiliary_loss(config, [v for k, v in captured.items() if k.endswith(".router")])
    return total
