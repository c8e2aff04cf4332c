"""The decoder-only LM: embeddings, a stack of sequential blocks, the head (JAX twin).

Each layer is built from its plan (spec/plan.py); a config that needs a feature the twin
does not compute (impl_jax/features.py) is refused with UnsupportedFeature, by name.

    h = embed_norm(embed.tokens[tokens]) (* sqrt(d_model)) (+ embed.positions[p])   (embed_norm: BLOOM)
                                               (images: their projected patches replace the
                                               placeholders' rows of the lookup, impl_jax/vision.py)
    for each layer, by where its norms sit (the plan's `norms`, spec/MATH.md "Block"); a "moe"
    layer's mlp is the mixture of experts (impl_jax/moe.py):
        pre            h = h + attn(attn_norm(h));                  h = h + mlp(mlp_norm(h))
        sandwich       h = h + attn_post_norm(attn(attn_norm(h)));  h = h + mlp_post_norm(mlp(mlp_norm(h)))
        post_sublayer  h = h + attn_post_norm(attn(h));             h = h + mlp_post_norm(mlp(h))
    logits = final_norm(h) @ W_head (+ b)      W_head = embed.tokens^T (unscaled) when tied
    (logits = logits * logit_scale: Cohere, PaLM's d_model^-0.5)
    (logits = c * tanh(logits / c) with final_logit_softcap c)

Pre: GPT-2, LLaMA.  Sandwich: Gemma 2/3 (transformers `Gemma2DecoderLayer`).  Post-sublayer:
OLMo 2 (transformers `Olmo2DecoderLayer`).  The embedding scale is Gemma's (transformers
`GemmaModel`: `hidden_states * normalizer`, the normalizer rounded to the activation dtype),
the logit softcap Gemma 2's (transformers `Gemma2ForCausalLM`).

Two layers of API:

* traced cores, pure and unchecked, for use inside the caller's own jit / grad / vmap:
  `forward_core(config, params, tokens, cache, capture, pixel_values) -> (logits, cache, captured)`
  and `loss_core(config, params, tokens, pixel_values)` (with the MoE load-balancing loss), jitted as
  `forward_jit` and `loss_jit` with `config` (a frozen, hashable dataclass) and `capture`
  static.  Only the features are checked, on the static config while tracing, so no core
  ever runs a knob it would ignore.
* host functions with the golden's checks and errors, in the golden's order (the features,
  spec.inputs.check_tokens, spec.vision.check_images, the params check): `forward`, `decode`,
  `loss`, and `evaluate` (forward's logits and captures with loss's value, from one compiled
  `evaluate_core`).  They validate concrete inputs on the host, then call the jitted cores
  (`jax.disable_jit()` runs them op by op).  `loss` stays differentiable in `params`: the
  params check reads shapes and dtypes only, which tracers have.

`capture` receives the intermediates named by spec/captures.py, in the golden's order (with
images, the image pathway's first); `layers.{i}.attn` / `.mlp` are what is added to the residual
stream (after a post norm).

`forward` with `cache=None` returns the logits; with a cache it returns `(logits, cache)`,
the new cache holding the new positions (JAX arrays are immutable, so the cache cannot be
updated in place as the golden's is).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from lmref.impl_jax.attention import attention
from lmref.impl_jax.cache import KVCache
from lmref.impl_jax.features import FEATURES
from lmref.impl_jax.mlp import mlp
from lmref.impl_jax.moe import load_balancing_loss, moe, router_z_loss
from lmref.impl_jax.norms import apply_norm, upcast
from lmref.impl_jax.vision import image_features, merge_images
from lmref.spec.captures import capture_names, moe_layers
from lmref.spec.config import ModelConfig
from lmref.spec.errors import InputError, ParamsError
from lmref.spec.features import check_supported
from lmref.spec.inputs import check_tokens
from lmref.spec.params import check_params as check_param_names_and_shapes, param_shapes
from lmref.spec.plan import LayerPlan, crosses_original_context, layer_plan
from lmref.spec.vision import check_images, vision_capture_names

BACKEND = "jax"


# --- the traced model ---------------------------------------------------------------------------


def embed(config: ModelConfig, params: dict, tokens: jax.Array, positions: jax.Array,
          images: jax.Array | None = None) -> jax.Array:
    """tokens [B, S] -> [B, S, d_model]; `images` [N, T, d_model] (projected) fill the placeholders."""
    h = params["embed.tokens"][tokens]  # [B, S, d_model]
    if images is not None:
        h = merge_images(config, tokens, h, images)
    if config.embedding_norm:  # BLOOM's word_embeddings_layernorm, before any scale or position
        h = apply_norm(config, params, "embed.norm", h)
    if config.embedding_scale == "sqrt_d_model":
        h = h * jnp.asarray(math.sqrt(config.d_model), h.dtype)
    if config.position == "learned":
        h = h + params["embed.positions"][positions][None, :, :]
    return h


def sublayer_input(config: ModelConfig, plan: LayerPlan, params: dict, norm: str, h: jax.Array) -> jax.Array:
    """What a sublayer reads: the residual stream, normalised by `norm` unless post_sublayer."""
    return h if plan.norms == "post_sublayer" else apply_norm(config, params, norm, h)


def sublayer_output(config: ModelConfig, plan: LayerPlan, params: dict, norm: str, y: jax.Array) -> jax.Array:
    """What a sublayer adds to the residual stream: its output, normalised by `norm` unless pre."""
    return y if plan.norms == "pre" else apply_norm(config, params, norm, y)


def feed_forward(config: ModelConfig, plan: LayerPlan, params: dict, x: jax.Array, captured: dict | None
                 ) -> jax.Array:
    """The layer's MLP (dense or a mixture, whose router logits are captured) of x [B, S, d]."""
    p = f"layers.{plan.index}"
    if plan.mlp != "moe":
        return mlp(config, params, f"{p}.mlp", x)
    m, router = moe(config, params, f"{p}.mlp", x)
    if captured is not None:
        captured[f"{p}.router"] = router
    return m


def block(config: ModelConfig, plan: LayerPlan, params: dict, h: jax.Array, positions: jax.Array,
          cache: KVCache | None, captured: dict | None) -> tuple[jax.Array, KVCache | None]:
    """One layer of the stack: [B, S, d_model] -> [B, S, d_model]."""
    if config.parallel_residual:
        return parallel_block(config, plan, params, h, positions, cache, captured)
    p = f"layers.{plan.index}"
    a, cache = attention(config, plan, params, f"{p}.attn", sublayer_input(config, plan, params, f"{p}.attn_norm", h),
                         positions, cache)
    a = sublayer_output(config, plan, params, f"{p}.attn_post_norm", a)
    h = h + a
    if captured is not None:
        captured[f"{p}.attn"] = a
    m = feed_forward(config, plan, params, sublayer_input(config, plan, params, f"{p}.mlp_norm", h), captured)
    m = sublayer_output(config, plan, params, f"{p}.mlp_post_norm", m)
    h = h + m
    if captured is not None:
        captured |= {f"{p}.mlp": m, f"{p}.out": h}
    return h, cache


def parallel_block(config: ModelConfig, plan: LayerPlan, params: dict, h: jax.Array, positions: jax.Array,
                   cache: KVCache | None, captured: dict | None) -> tuple[jax.Array, KVCache | None]:
    """A parallel layer (spec/MATH.md, "Block"): h + attn(attn_norm(h)) + mlp(mlp_norm(h)), the
    MLP reading attn_norm(h) with `shared_attn_norm` (GPT-J); "pre" norms only."""
    p = f"layers.{plan.index}"
    x = apply_norm(config, params, f"{p}.attn_norm", h)
    a, cache = attention(config, plan, params, f"{p}.attn", x, positions, cache)
    if captured is not None:  # in the order of capture_names: attn, a mixture's router, mlp, out
        captured[f"{p}.attn"] = a
    x_mlp = x if config.shared_attn_norm else apply_norm(config, params, f"{p}.mlp_norm", h)
    m = feed_forward(config, plan, params, x_mlp, captured)
    h = h + a + m
    if captured is not None:
        captured |= {f"{p}.mlp": m, f"{p}.out": h}
    return h, cache


def head(config: ModelConfig, params: dict, h: jax.Array) -> jax.Array:
    """[B, S, d_model] -> logits [B, S, vocab]."""
    weight = params["embed.tokens"].T if config.tie_embeddings else params["lm_head.weight"]
    logits = h @ weight  # [B, S, d_model] @ [d_model, vocab]
    if config.lm_head_bias:
        logits = logits + params["lm_head.bias"]
    if config.logit_scale != 1.0:  # Cohere (`CohereForCausalLM`); PaLM's d_model^-0.5 (section 5)
        logits = logits * jnp.asarray(config.logit_scale, logits.dtype)
    if config.final_logit_softcap is not None:
        c = config.final_logit_softcap  # tanh in at least float32, like the attention softcap
        logits = (c * jnp.tanh(upcast(logits) / c)).astype(logits.dtype)
    return logits


def forward_core(config: ModelConfig, params: dict, tokens: jax.Array, cache: KVCache | None = None,
                 capture: bool = False, pixel_values: jax.Array | None = None
                 ) -> tuple[jax.Array, KVCache | None, dict | None]:
    """(logits [B, S, vocab], cache advanced by S or None, intermediates by name or None).

    Unchecked but for the features (at trace time): tokens must be valid ids that fit the
    context after the cache's contents; `pixel_values` [N, C, H, W], the images of the
    placeholders, exactly N * tokens_per_image of them (spec.vision.check_images)."""
    check_supported(config, BACKEND, FEATURES)
    positions = jnp.arange(tokens.shape[1])  # [S]
    if cache is not None:
        positions = cache.length + positions
    captured: dict | None = {} if capture else None
    images = None if pixel_values is None else image_features(config, params, pixel_values, captured)
    h = embed(config, params, tokens, positions, images)
    if captured is not None:
        captured["embed"] = h
    for plan in layer_plan(config):
        h, cache = block(config, plan, params, h, positions, cache, captured)
    h = apply_norm(config, params, "final_norm", h)
    logits = head(config, params, h)
    if cache is not None:
        cache = cache.take(tokens)
    if captured is not None:
        captured |= {"final_norm": h, "logits": logits}
    return logits, cache, captured


def scored_mean(config: ModelConfig, values: jax.Array, targets: jax.Array) -> jax.Array:
    """The mean of values [B, S-1] over the targets [B, S-1] that are scored: all of them, but
    the image placeholders with a tower (LLaVA's labels are IGNORE_INDEX there, transformers
    `LlavaForConditionalGeneration`), by weights rather than a boolean mask, so it jits."""
    if config.vision is None:
        return values.mean()
    scored = (targets != config.vision.image_token_id).astype(values.dtype)  # [B, S-1]
    return (values * scored).sum() / scored.sum()


def loss_core(config: ModelConfig, params: dict, tokens: jax.Array, pixel_values: jax.Array | None = None
              ) -> jax.Array:
    """Mean next-token cross-entropy: position t predicts token t + 1, over the B * (S - 1)
    targets but the image placeholders (at least one must be text); plus `logit_z_loss_coef`
    times the mean of logsumexp(logits)^2 over those rows (PaLM section 5; t5x losses.py
    `cross_entropy_with_logits`); plus `moe.aux_loss_coef` times the load-balancing loss and
    `moe.router_z_loss_coef` times the router z-loss over the router logits of all S positions
    of every "moe" layer (impl_jax/moe.py), as the golden's `loss`: one forward over all S
    tokens, whose last position's logits have no target."""
    logits, _, captured = forward_core(config, params, tokens, capture=True, pixel_values=pixel_values)
    rows = upcast(logits[:, :-1])  # [B, S-1, V], at least float32; jit drops the unused captures
    targets = tokens[:, 1:]  # [B, S-1]
    picked = jnp.take_along_axis(jax.nn.log_softmax(rows, axis=-1), targets[..., None], axis=-1)[..., 0]
    total = -scored_mean(config, picked, targets)
    if config.logit_z_loss_coef > 0:
        total = total + config.logit_z_loss_coef * scored_mean(config, jax.nn.logsumexp(rows, axis=-1) ** 2, targets)
    m = config.moe
    if m is not None and (m.aux_loss_coef > 0 or m.router_z_loss_coef > 0):
        routers = [captured[f"layers.{i}.router"] for i in moe_layers(config)]
        if m.aux_loss_coef > 0:
            total = total + m.aux_loss_coef * load_balancing_loss(config, routers)
        if m.router_z_loss_coef > 0:
            total = total + m.router_z_loss_coef * router_z_loss(config, routers)
    return total


def evaluate_core(config: ModelConfig, params: dict, tokens: jax.Array, pixel_values: jax.Array | None = None
                  ) -> tuple[jax.Array, dict, jax.Array | None]:
    """forward_core's logits and intermediates and loss_core's value on the same tokens, from one
    traced function (the loss None for one-token sequences, which have no target).  Compiled
    once, the two share a single XLA compilation, which costs about 1.15 times one of them
    rather than twice (XLA merges the repeated forward); the conformance adapter's use."""
    logits, _, captured = forward_core(config, params, tokens, capture=True, pixel_values=pixel_values)
    value = loss_core(config, params, tokens, pixel_values) if tokens.shape[1] >= 2 else None
    return logits, captured, value


forward_jit = jax.jit(forward_core, static_argnames=("config", "capture"))
loss_jit = jax.jit(loss_core, static_argnames="config")
evaluate_jit = jax.jit(evaluate_core, static_argnames="config")


# --- host functions: the golden's checks, then the jitted cores ----------------------------------


def check_params(config: ModelConfig, params: dict) -> None:
    """spec.params.check_params, knowing bfloat16 and tracers: names and shapes are checked by
    the spec on zero-size stand-ins, the dtype here (NumPy does not count bfloat16 as floating)."""
    if not isinstance(params, dict):
        check_param_names_and_shapes(config, params)  # raises the spec's ParamsError
    stand_ins = {k: np.broadcast_to(np.float32(0), np.shape(v)) for k, v in params.items()}
    check_param_names_and_shapes(config, stand_ins)
    for k in param_shapes(config):  # the spec's order, so the first bad one is the golden's
        v = params[k]
        dtype = v.dtype if hasattr(v, "dtype") else np.asarray(v).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ParamsError(f"{k}: expected a floating-point array, got dtype {dtype}")


def _check_cache_batch(cache: KVCache | None, tokens: np.ndarray) -> None:
    if cache is not None and cache.batch != tokens.shape[0]:
        raise InputError(f"tokens have batch {tokens.shape[0]} but the KV cache holds batch {cache.batch}")


def _check_images(config: ModelConfig, tokens: np.ndarray, pixel_values: object,
                  prompt_len: int | None = None) -> np.ndarray | None:
    """spec.vision.check_images, knowing bfloat16 (which NumPy does not count as floating): such
    images are checked, and passed on, as float32, an exact widening."""
    dtype = getattr(pixel_values, "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and not np.issubdtype(dtype, np.floating):
        pixel_values = np.asarray(pixel_values).astype(np.float32)
    return check_images(config, tokens, pixel_values, prompt_len=prompt_len)


def _check_forward_inputs(config: ModelConfig, params: dict, tokens: object, pixel_values: object,
                          cache: KVCache | None = None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """forward's checks, in the golden's order: the checked tokens and images, and the cache's length."""
    check_supported(config, BACKEND, FEATURES)
    past = 0 if cache is None else int(cache.length)  # a host sync: the check needs the number
    tokens = check_tokens(config, tokens, past_len=past)
    images = _check_images(config, tokens, pixel_values)
    _check_cache_batch(cache, tokens)
    check_params(config, params)
    return tokens, images, past


def forward(config: ModelConfig, params: dict, tokens: object, cache: KVCache | None = None, *,
            pixel_values: object = None, capture: dict | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """Logits [B, S, vocab] for tokens [B, S]; with a cache, the tokens follow its contents and
    `(logits, new_cache)` is returned.  `pixel_values` [N, C, H, W]: the images whose features
    fill the image placeholders (cast to the params' dtype).  `capture`, a dict, receives the
    intermediates."""
    tokens, images, past = _check_forward_inputs(config, params, tokens, pixel_values, cache)
    seq = tokens.shape[1]
    if cache is not None and crosses_original_context(config, past, past + seq):
        # LongRoPE (never with images, spec/validation.py): the factors of every cached position
        # change; re-run them (spec/MATH.md)
        tokens = np.concatenate([np.asarray(cache.tokens[:, :past]), tokens], axis=1)  # [B, past + S]
        cache = KVCache.empty(config, tokens.shape[0], cache.keys[0].dtype)
    logits, cache, captured = forward_jit(config, params, tokens, cache, capture is not None, images)
    if capture is not None:  # jit returns keys sorted; a re-run's last S positions are the step's
        image_names = set(vision_capture_names(config)) if images is not None else set()
        capture |= {name: captured[name] if name in image_names else captured[name][:, -seq:]
                    for name in capture_names(config, images=images is not None)}
    return logits[:, -seq:] if cache is None else (logits[:, -seq:], cache)


def decode(config: ModelConfig, params: dict, tokens: object, prompt_len: int, *,
           pixel_values: object = None) -> jax.Array:
    """Logits [B, S, vocab]: one prefill of the first `prompt_len` tokens (and the images, whose
    placeholders must all be in it), then one token at a time through the KV cache
    (teacher-forced).  Step t's logits are `forward`'s on tokens 0..t: the whole sequence's but
    for LongRoPE (spec/MATH.md, "Decode")."""
    check_supported(config, BACKEND, FEATURES)
    tokens = check_tokens(config, tokens)
    if not 1 <= prompt_len <= tokens.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {tokens.shape[1]}], got {prompt_len}")
    images = _check_images(config, tokens, pixel_values, prompt_len)
    check_params(config, params)
    cache = KVCache.empty(config, tokens.shape[0], jnp.asarray(params["embed.tokens"]).dtype)
    logits, cache = forward(config, params, tokens[:, :prompt_len], cache, pixel_values=images)
    steps = [logits]
    for t in range(prompt_len, tokens.shape[1]):
        logits, cache = forward(config, params, tokens[:, t : t + 1], cache)
        steps.append(logits)
    return jnp.concatenate(steps, axis=1)


def loss(config: ModelConfig, params: dict, tokens: object, *, pixel_values: object = None) -> jax.Array:
    """Mean next-token cross-entropy over the text targets, plus PaLM's logit z-loss and a
    mixture's auxiliary losses where the config weights them (a 0-d array, differentiable in
    `params`).  `pixel_values`: as `forward`'s."""
    tokens, images = _check_loss_inputs(config, params, tokens, pixel_values)
    return loss_jit(config, params, tokens, images)


def _check_loss_inputs(config: ModelConfig, params: dict, tokens: object, pixel_values: object
                       ) -> tuple[np.ndarray, np.ndarray | None]:
    """loss's checks, in the golden's order: the checked tokens and images."""
    check_supported(config, BACKEND, FEATURES)
    tokens = check_tokens(config, tokens)
    if tokens.shape[1] < 2:
        raise ValueError(f"loss needs sequences of at least 2 tokens, got {tokens.shape[1]}")
    images = _check_images(config, tokens, pixel_values)
    check_params(config, params)
    if config.vision is not None and np.all(tokens[:, 1:] == config.vision.image_token_id):
        raise ValueError("loss has no target: every next token is an image placeholder")
    return tokens, images


def evaluate(config: ModelConfig, params: dict, tokens: object, *, pixel_values: object = None,
             for_loss: bool = False) -> tuple[jax.Array, dict, jax.Array | None]:
    """(logits [B, S, vocab], the intermediates by name, the loss) of `forward` and `loss` on the
    same inputs, through one compiled function (`evaluate_core`), with forward's checks, or
    loss's with `for_loss` (then the loss is never None)."""
    if for_loss:
        tokens, images = _check_loss_inputs(config, params, tokens, pixel_values)
    else:
        tokens, images, _ = _check_forward_inputs(config, params, tokens, pixel_values)
    logits, captured, value = evaluate_jit(config, params, tokens, images)
    names = capture_names(config, images=images is not None)  # jit returns keys sorted
    return logits, {name: captured[name] for name in names}, value


# --- conversions --------------------------------------------------------------------------------


def from_canonical(params: dict, dtype: str = "float32") -> dict[str, jax.Array]:
    """The canonical dict (spec/params.py, any float arrays) as JAX arrays of `dtype`.

    float64 needs x64 enabled (`with jax.enable_x64(True):`); it is refused rather than
    silently truncated to float32."""
    if not isinstance(params, dict):
        raise ParamsError(f"params must be a dict of arrays, got {type(params).__name__}")
    target = jnp.dtype(dtype)
    if jax.dtypes.canonicalize_dtype(target) != target:
        raise ValueError(f"dtype {dtype} needs 64-bit JAX: run inside `with jax.enable_x64(True):`")
    return {k: jnp.asarray(np.asarray(v).astype(target)) for k, v in params.items()}


def to_canonical(params: dict) -> dict[str, np.ndarray]:
    """JAX params as the canonical float64 NumPy dict (an exact widening of every float dtype)."""
    return {k: np.asarray(v).astype(np.float64) for k, v in params.items()}
