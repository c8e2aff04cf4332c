"""The curated mutants: single-point porting bugs of impl_torch and impl_jax, as data.

Each mutant replaces `old` (which must occur exactly once in `file`: tests/test_mutation_list.py
fails, naming the mutant, when the code moves) by `new`.  `tests` are the property-test files run
first (then the rest of the backend's); `impls` the conformance impls (conformance/adapters.py
BUILTINS) and `archs` the presets whose golden cases make the knob active (docs/coverage.md).
`equivalent` says why a mutant changes no output; `reason` why a suite is known to miss it.

Adding a knob: add one mutant per twin that has its code (docs/mutation.md, "Adding a mutant").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    id: str  # "<backend>-<what>": torch-rope-theta
    file: str  # repo-relative, under impl_torch/ or impl_jax/
    old: str  # exact text, once in `file`
    new: str
    bug: str  # the porting bug, one line
    knob: str  # the knob or feature it concerns (docs/coverage.md's names where there is one)
    tests: tuple[str, ...]  # property-test files to run first
    impls: tuple[str, ...]  # conformance impls
    archs: str  # --arch value: presets, families or patterns, comma-separated
    equivalent: str | None = None  # why it changes no output
    reason: str | None = None  # why a suite is known to miss it

    @property
    def backend(self) -> str:
        return "torch" if self.file.startswith("impl_torch/") else "jax"


T_PROPS, T_LOGITS, T_DECODE = "tests/torch/test_properties.py", "tests/torch/test_logits.py", "tests/torch/test_decode.py"
T_MASKS, T_MOE, T_VISION = "tests/torch/test_masks.py", "tests/torch/test_moe.py", "tests/torch/test_vision.py"
T_PRECISION, T_GRAD = "tests/torch/test_precision.py", "tests/torch/test_grad.py"
J_PREFILL, J_DECODE, J_MASKS = "tests/jax/test_prefill.py", "tests/jax/test_decode.py", "tests/jax/test_masks.py"
J_MOE, J_VISION, J_PRECISION = "tests/jax/test_moe.py", "tests/jax/test_vision.py", "tests/jax/test_precision.py"
J_GRAD = "tests/jax/test_grad.py"
TORCH, EAGER, JAX = ("torch",), ("torch-eager",), ("jax",)
# the bfloat16 twins: the precision mutants act only where the model runs in a half dtype
TORCH_BF16 = ("lmref.impl_torch.adapter:bfloat16",)
EAGER_BF16 = ("lmref.impl_torch.adapter:eager_bfloat16",)
JAX_BF16 = ("lmref.impl_jax.adapter:bfloat16",)
WITHIN_BF16_ROW = ("the bfloat16 twin with the mutant still meets the bfloat16 row: on tiny random models the damage "
                   "stays inside it (issue 17); the precision tests check the dtypes structurally")
TR, TA, TN, TM = "impl_torch/rope.py", "impl_torch/attention.py", "impl_torch/norms.py", "impl_torch/masks.py"
JR, JA, JN, JM = "impl_jax/rope.py", "impl_jax/attention.py", "impl_jax/norms.py", "impl_jax/masks.py"

SDPA_CALL = "q, k, v, attn_mask=bias, is_causal=bias is None, scale=config.attn_scale,"
JAX_GQA = "q = q.reshape(batch, seq, config.n_kv_heads, config.kv_group_size, config.head_dim)"

MUTANTS: tuple[Mutant, ...] = (
    # RoPE: theta, layout, width, scalings
    Mutant("torch-rope-theta", TR, "return 1.0 / theta**exponents", "return 1.0 / 10000.0**exponents",
           "RoPE base hard-coded to 10000 (the config's rope_theta ignored)", "rope_theta",
           (T_LOGITS,), TORCH, "llama3"),
    Mutant("jax-rope-theta", JR, "return 1.0 / theta ** (np.arange", "return 1.0 / 10000.0 ** (np.arange",
           "RoPE base hard-coded to 10000 (the config's rope_theta ignored)", "rope_theta",
           (J_PREFILL,), JAX, "llama3"),
    Mutant("torch-rope-interleaved-as-halves", TR, "x1, x2 = rot[..., 0::2], rot[..., 1::2]",
           "x1, x2 = rot[..., : r // 2], rot[..., r // 2 :]",
           "interleaved layout pairs (x_i, x_{i+r/2}) like halves, then re-interleaves", "rope_layout=interleaved",
           (T_LOGITS,), TORCH, "gptj-6b,llama4-scout"),
    Mutant("jax-rope-interleaved-as-halves", JR, "pairs = rot.reshape(*rot.shape[:-1], r // 2, 2)",
           "pairs = jnp.swapaxes(rot.reshape(*rot.shape[:-1], 2, r // 2), -1, -2)",
           "interleaved layout pairs (x_i, x_{i+r/2}) like halves, then re-interleaves", "rope_layout=interleaved",
           (J_PREFILL,), JAX, "gptj-6b,llama4-scout"),
    Mutant("torch-rope-partial-last-dims", TR, "rot, rest = x[..., :r].to(cos.dtype), x[..., r:]",
           "rot, rest = x[..., -r:].to(cos.dtype), x[..., :-r]",
           "partial rotary rotates the last rotary_dim dims of a head instead of the first", "rope_fraction",
           (T_LOGITS,), TORCH, "pythia-160m,phi-2"),
    Mutant("jax-rope-partial-last-dims", JR, "rot, rest = x[..., :r].astype(cos.dtype), x[..., r:]",
           "rot, rest = x[..., -r:].astype(cos.dtype), x[..., :-r]",
           "partial rotary rotates the last rotary_dim dims of a head instead of the first", "rope_fraction",
           (J_PREFILL,), JAX, "pythia-160m,phi-2"),
    Mutant("torch-rope-llama3-smoothing", TR, "smoothed = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq",
           "smoothed = smooth * inv_freq / s.factor + (1 - smooth) * inv_freq",
           "Llama 3.1 scaling: the band's interpolation weights swapped", "rope_scaling.kind=llama3",
           (T_LOGITS,), TORCH, "llama3.1"),
    Mutant("jax-rope-llama3-bands", JR, "[inv_freq, inv_freq / s.factor], interpolated)",
           "[inv_freq / s.factor, inv_freq], interpolated)",
           "Llama 3.1 scaling: high frequencies divided by factor, low ones kept (bands swapped)",
           "rope_scaling.kind=llama3", (J_PREFILL,), JAX, "llama3.1"),
    Mutant("torch-rope-linear", TR, "return freqs / s.factor", "return freqs * s.factor",
           "linear scaling multiplies the frequencies by factor instead of dividing", "rope_scaling.kind=linear",
           (T_LOGITS,), TORCH, "gemma3-4b"),
    Mutant("jax-rope-linear", JR, "return freqs / s.factor", "return freqs * s.factor",
           "linear scaling multiplies the frequencies by factor instead of dividing", "rope_scaling.kind=linear",
           (J_PREFILL,), JAX, "gemma3-4b"),
    Mutant("torch-longrope-long-factors", TR, "short, long = plain / short_factor, plain / long_factor",
           "short, long = plain / short_factor, plain / short_factor",
           "LongRoPE: the long table built from the short factors (copy-paste)", "rope_scaling.kind=longrope",
           (T_LOGITS, T_DECODE), TORCH, "phi-3-mini-128k"),
    Mutant("jax-longrope-long-factors", JR, "s.long_factor if long else s.short_factor",
           "s.short_factor if long else s.short_factor",
           "LongRoPE: the long table built from the short factors (copy-paste)", "rope_scaling.kind=longrope",
           (J_PREFILL, J_DECODE), JAX, "phi-3-mini-128k"),
    Mutant("jax-longrope-threshold", JR, "is_long = positions.max() + 1 > s.original_max_seq_len",
           "is_long = positions.max() > s.original_max_seq_len",
           "LongRoPE switches to the long factors one position late (compares the last position, not the length)",
           "rope_scaling.kind=longrope", (J_PREFILL, J_DECODE), JAX, "phi-3-mini-128k"),
    Mutant("torch-longrope-no-rerun", "impl_torch/model.py",
           "if crosses_original_context(self.config, past, past + tokens.shape[1]):",
           "if crosses_original_context(self.config, past, past):",
           "LongRoPE decode: a step past the original context keeps the short-factor cache (no re-run)",
           "rope_scaling.kind=longrope", (T_DECODE,), TORCH, "phi-3-mini-128k"),
    Mutant("jax-longrope-no-rerun", "impl_jax/model.py",
           "if cache is not None and crosses_original_context(config, past, past + seq):",
           "if cache is not None and crosses_original_context(config, past, past):",
           "LongRoPE decode: a step past the original context keeps the short-factor cache (no re-run)",
           "rope_scaling.kind=longrope", (J_DECODE,), JAX, "phi-3-mini-128k"),
    # masks
    Mutant("torch-causal-off-by-one", TM, "return k_positions[:, None, :] <= q_positions[:, :, None]",
           "return k_positions[:, None, :] < q_positions[:, :, None]",
           "causal mask hides the query's own key (k < q)", "attn_pattern[global]",
           (T_MASKS, T_DECODE), TORCH, "llama3"),
    Mutant("jax-causal-off-by-one", JM, "seen = back >= 0", "seen = back > 0",
           "causal mask hides the query's own key (k < q)", "attn_pattern[global]", (J_MASKS,), JAX, "llama3"),
    Mutant("torch-sliding-off-by-one", TM, "(k_positions[:, None, :] > q_positions[:, :, None] - window)",
           "(k_positions[:, None, :] >= q_positions[:, :, None] - window)",
           "sliding window shows W + 1 keys (q - W <= k)", "attn_pattern[sliding]",
           (T_MASKS,), TORCH, "mistral-7b,gemma2-9b"),
    Mutant("jax-sliding-off-by-one", JM, "seen = seen & (back < mask.window)", "seen = seen & (back <= mask.window)",
           "sliding window shows W + 1 keys (q - W <= k)", "attn_pattern[sliding]",
           (J_MASKS,), JAX, "mistral-7b,gemma2-9b"),
    Mutant("torch-chunked-as-sliding", TM, "return causal(q_positions, k_positions) & same_chunk",
           "return causal(q_positions, k_positions) & (k_positions[:, None, :] > q_positions[:, :, None] - chunk)",
           "chunked attention as a sliding window of C keys, not fixed chunks from position 0",
           "attn_pattern[chunked]", (T_MASKS,), TORCH, "llama4-scout"),
    Mutant("jax-chunked-as-sliding", JM, "seen = seen & (back <= jnp.remainder(q, mask.chunk))",
           "seen = seen & (back < mask.chunk)",
           "chunked attention as a sliding window of C keys, not fixed chunks from position 0",
           "attn_pattern[chunked]", (J_MASKS,), JAX, "llama4-scout"),
    Mutant("torch-ring-one-slot-more", "impl_torch/cache.py", "min(plan.mask.window - 1, capacity)",
           "min(plan.mask.window, capacity)",
           "the sliding layers' ring buffer keeps W keys instead of W - 1", "attn_pattern[sliding]",
           (T_DECODE,), TORCH, "mistral-7b",
           equivalent="the extra slot holds a key the sliding mask hides (attention reads positions, not slots)"),
    # attention scale and GQA grouping
    Mutant("torch-eager-scale-head-dim", TA, "scores = scores * config.attn_scale",
           "scores = scores * config.head_dim**-0.5",
           "eager kernel scales by head_dim^-0.5, ignoring query_scale_dim", "query_scale_dim",
           (T_PROPS, T_LOGITS), TORCH + EAGER, "gemma2-27b"),
    Mutant("torch-sdpa-scale-head-dim", TA, SDPA_CALL, SDPA_CALL.replace("config.attn_scale", "config.head_dim**-0.5"),
           "SDPA kernel scales by head_dim^-0.5, ignoring query_scale_dim", "query_scale_dim",
           (T_PROPS, T_LOGITS), TORCH, "gemma3-27b"),  # gemma2-27b softcaps: it runs the eager kernel
    Mutant("jax-scale-head-dim", JA, "preferred_element_type=wide) * config.attn_scale",
           "preferred_element_type=wide) * config.head_dim ** -0.5",
           "scores scaled by head_dim^-0.5, ignoring query_scale_dim", "query_scale_dim",
           (J_PREFILL,), JAX, "gemma2-27b,gemma3-27b"),
    Mutant("torch-eager-gqa-tiled", TA,
           "return q.reshape(b, n_kv, h // n_kv, sq, d)",
           "return q.reshape(b, h // n_kv, n_kv, sq, d).transpose(1, 2)",
           "eager kernel tiles the KV heads (query head h reads kv head h % KV) instead of grouping them",
           "heads: GQA (1 < n_kv_heads < n_heads)", (T_PROPS,), EAGER, "llama3"),
    Mutant("torch-sdpa-gqa-tiled", TA, SDPA_CALL,
           SDPA_CALL.replace("q, k, v,", "q, k.repeat(1, config.kv_group_size, 1, 1), "
                                         "v.repeat(1, config.kv_group_size, 1, 1),"),
           "SDPA gets KV heads tiled with .repeat (query head h reads kv head h % KV)",
           "heads: GQA (1 < n_kv_heads < n_heads)", (T_PROPS, T_LOGITS), TORCH, "llama3"),
    Mutant("jax-gqa-tiled", JA, JAX_GQA,
           JAX_GQA.replace("config.n_kv_heads, config.kv_group_size", "config.kv_group_size, config.n_kv_heads")
           + ".swapaxes(2, 3)",
           "query heads viewed as [group, KV] (query head h reads kv head h % KV) instead of [KV, group]",
           "heads: GQA (1 < n_kv_heads < n_heads)", (J_PREFILL,), JAX, "llama3"),
    # norms and activations
    Mutant("torch-rmsnorm-eps-outside-sqrt", TN, "return F.rms_norm(x, x.shape[-1:], weight, eps)",
           "return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps) * (1.0 if weight is None else weight)",
           "RMSNorm adds eps outside the square root", "norm=rmsnorm", (T_LOGITS,), TORCH, "llama3,gemma-2b"),
    Mutant("jax-rmsnorm-eps-outside-sqrt", JN,
           "return x * jax.lax.rsqrt(jnp.square(x).mean(axis=-1, keepdims=True) + eps)",
           "return x / (jnp.sqrt(jnp.square(x).mean(axis=-1, keepdims=True)) + eps)",
           "RMSNorm adds eps outside the square root", "norm=rmsnorm", (J_PREFILL,), JAX, "llama3,gemma-2b"),
    Mutant("torch-norm-no-unit-offset", TN, "return 1.0 + w if self.unit_offset else w", "return w",
           "Gemma's norm scales by w instead of (1 + w)", "norm_unit_offset=True", (T_LOGITS,), TORCH, "gemma-2b"),
    Mutant("jax-norm-no-unit-offset", JN, "y = y * (1 + w) if config.norm_unit_offset else y * w", "y = y * w",
           "Gemma's norm scales by w instead of (1 + w)", "norm_unit_offset=True", (J_PREFILL,), JAX, "gemma-2b"),
    Mutant("torch-gelu-tanh-exact", "impl_torch/mlp.py",
           'gelu_tanh = functools.partial(F.gelu, approximate="tanh")', "gelu_tanh = F.gelu",
           "the tanh GELU computed as the exact (erf) GELU", "activation=gelu_tanh",
           (T_LOGITS,), TORCH, "gpt2,gemma-2b"),
    Mutant("jax-gelu-exact-as-tanh", "impl_jax/mlp.py", "return jax.nn.gelu(x, approximate=False)",
           "return jax.nn.gelu(x)",
           "the exact GELU left at jax.nn.gelu's default, the tanh approximation", "activation=gelu",
           (J_PREFILL,), JAX, "falcon-7b,pythia-160m"),
    # ALiBi
    Mutant("torch-alibi-press-even", "impl_torch/alibi.py", "_power_of_two_slopes(2 * closest, max_bias)[0::2]",
           "_power_of_two_slopes(2 * closest, max_bias)[1::2]",
           "ALiBi 'press' slopes for n not a power of two take the even exponents of 2n'",
           "position=alibi, n_heads not a power of two", (T_LOGITS,), TORCH, "bloom-560m"),
    Mutant("jax-alibi-press-even", "impl_jax/alibi.py", "for h in range(1, 2 * closest + 1, 2)]",
           "for h in range(2, 2 * closest + 1, 2)]",
           "ALiBi 'press' slopes for n not a power of two take the even exponents of 2n'",
           "position=alibi, n_heads not a power of two", (J_PREFILL,), JAX, "bloom-560m"),
    Mutant("torch-alibi-geometric-from-zero", "impl_torch/alibi.py",
           "(h * max_bias / n_heads) for h in range(1, n_heads + 1)]", "(h * max_bias / n_heads) for h in range(n_heads)]",
           "OLMo's geometric slopes start at h = 0 (slope 1) instead of h = 1", "alibi_slopes=geometric",
           (T_LOGITS,), TORCH, "olmo-alibi"),
    Mutant("jax-alibi-geometric-from-zero", "impl_jax/alibi.py", "np.arange(1, n_heads + 1, dtype=np.float64)",
           "np.arange(0, n_heads, dtype=np.float64)",
           "OLMo's geometric slopes start at h = 0 (slope 1) instead of h = 1", "alibi_slopes=geometric",
           (J_PREFILL,), JAX, "olmo-alibi"),
    # decode: positions and the KV cache
    Mutant("torch-decode-positions-from-zero", "impl_torch/model.py",
           "positions = past + torch.arange(tokens.shape[1], device=self.device)[None]",
           "positions = torch.arange(tokens.shape[1], device=self.device)[None]",
           "a decode step's positions restart at 0 instead of the cache length", "decode",
           (T_DECODE,), TORCH, "llama3"),
    Mutant("jax-decode-positions-off-by-one", "impl_jax/model.py", "positions = cache.length + positions",
           "positions = cache.length - 1 + positions",
           "a decode step's positions start one before the cache length", "decode", (J_DECODE,), JAX, "llama3"),
    Mutant("torch-cache-values-layer-0", "impl_torch/cache.py", "self.values[layer][:, :, self.length : stop] = v",
           "self.values[0][:, :, self.length : stop] = v",
           "every layer writes its values into layer 0's cache", "decode", (T_DECODE,), TORCH, "llama3"),
    Mutant("jax-cache-keys-slot-before", "impl_jax/cache.py", "start = (zero, self.length, zero, zero)",
           "start = (zero, self.length - 1, zero, zero)",
           "keys and values written one slot before the positions that label them", "decode",
           (J_DECODE,), JAX, "llama3"),
    Mutant("jax-cache-positions-of-layer-0", JA, "cache.values[i], cache.positions[i]",
           "cache.values[i], cache.positions[0]",
           "every layer reads layer 0's slot positions", "decode", (J_DECODE,), JAX, "llama3",
           equivalent="every layer records the same positions in the same slots"),
    # loss, softcaps
    Mutant("torch-loss-unshifted", "impl_torch/model.py", "return self.objective(logits[:, :-1], tokens[:, 1:], routers)",
           "return self.objective(logits[:, 1:], tokens[:, 1:], routers)",
           "loss scores position t + 1's logits against token t + 1 (no shift)", "loss",
           (T_LOGITS, T_GRAD), TORCH, "llama3"),
    Mutant("jax-loss-unshifted", "impl_jax/model.py", "rows = upcast(logits[:, :-1])", "rows = upcast(logits[:, 1:])",
           "loss scores position t + 1's logits against token t + 1 (no shift)", "loss", (J_GRAD,), JAX, "llama3"),
    Mutant("torch-attn-softcap-final-value", TA, "scores = softcap(scores, config.attn_softcap)",
           "scores = softcap(scores, config.final_logit_softcap)",
           "attention scores capped with the final-logit cap (copy-paste)", "attn_softcap",
           (T_LOGITS,), TORCH, "gemma2-9b"),
    Mutant("jax-final-softcap-unscaled", "impl_jax/model.py",
           "logits = (c * jnp.tanh(upcast(logits) / c)).astype(logits.dtype)",
           "logits = jnp.tanh(upcast(logits) / c).astype(logits.dtype)",
           "final-logit softcap forgets the factor c outside the tanh", "final_logit_softcap",
           (J_PREFILL,), JAX, "gemma2-9b"),
    # mixture of experts
    Mutant("torch-moe-topk-then-softmax", "impl_torch/moe.py",
           "weights, chosen = torch.topk(torch.softmax(z, dim=-1), m.n_experts_per_token, dim=-1)",
           "weights, chosen = torch.topk(z, m.n_experts_per_token, dim=-1); weights = torch.softmax(weights, dim=-1)",
           "router takes the softmax over the top-k logits, not over all experts", "moe.renormalize=False",
           (T_MOE,), TORCH, "olmoe-1b-7b,qwen1.5-moe-a2.7b"),
    Mutant("jax-moe-topk-then-softmax", "impl_jax/moe.py", "probs = jax.nn.softmax(z, axis=-1)",
           "probs = jax.nn.softmax(jnp.where(z >= jax.lax.top_k(z, m.n_experts_per_token)[0][..., -1:], z, -jnp.inf))",
           "router takes the softmax over the top-k logits, not over all experts", "moe.renormalize=False",
           (J_MOE,), JAX, "olmoe-1b-7b,qwen1.5-moe-a2.7b"),
    Mutant("torch-moe-always-renormalize", "impl_torch/moe.py", "        if m.renormalize:", "        if True:",
           "router weights renormalised whatever moe.renormalize says", "moe.renormalize=False",
           (T_MOE,), TORCH, "olmoe-1b-7b"),
    Mutant("jax-moe-always-renormalize", "impl_jax/moe.py", "    if m.renormalize:", "    if True:",
           "router weights renormalised whatever moe.renormalize says", "moe.renormalize=False",
           (J_MOE,), JAX, "olmoe-1b-7b"),
    Mutant("torch-moe-dense-unweighted", "impl_torch/moe.py", ".scatter(1, chosen, weights)",
           ".scatter(1, chosen, torch.ones_like(weights))",
           "the dense MoE path sums the chosen experts without their router weights", "moe",
           (T_MOE,), ("torch-moe-dense",), "mixtral-8x7b"),
    # the vision tower
    Mutant("torch-vision-every-layer", "impl_torch/vision.py", "enumerate(self.layers[: self.v.layers_run])",
           "enumerate(self.layers)",
           "features from the tower's last layer instead of feature_layer (-2)", "vision",
           (T_VISION,), TORCH, "llava-1.5-7b"),
    Mutant("jax-vision-every-layer", "impl_jax/vision.py", "for i in range(v.layers_run):",
           "for i in range(v.n_layers):",
           "features from the tower's last layer instead of feature_layer (-2)", "vision",
           (J_VISION,), JAX, "llava-1.5-7b"),
    Mutant("torch-vision-drop-last-patch", "impl_torch/vision.py",
           'features = x[:, 1:] if self.v.feature_strategy == "drop_class" else x',
           'features = x[:, :-1] if self.v.feature_strategy == "drop_class" else x',
           "drop_class drops the last patch instead of the class token", "vision.feature_strategy=drop_class",
           (T_VISION,), TORCH, "llava-1.5-7b"),
    Mutant("jax-vision-drop-last-patch", "impl_jax/vision.py",
           'features = x[:, 1:] if v.feature_strategy == "drop_class" else x',
           'features = x[:, :-1] if v.feature_strategy == "drop_class" else x',
           "drop_class drops the last patch instead of the class token", "vision.feature_strategy=drop_class",
           (J_VISION,), JAX, "llava-1.5-7b"),
    # missing upcasts (spec/MATH.md, "Precision policy")
    Mutant("jax-scores-in-bfloat16", JA, "wide = jnp.promote_types(q.dtype, jnp.float32)", "wide = q.dtype",
           "attention scores, ALiBi bias and softmax in the model's dtype (bfloat16) instead of float32",
           "precision", (J_PRECISION,), JAX_BF16, "bloom-560m,llama3",
           reason=WITHIN_BF16_ROW),
    Mutant("torch-eager-bias-in-bfloat16", TA, 'return compute_dtype(dtype) if attn_impl == "eager" else dtype',
           "return dtype", "the eager kernel's mask and ALiBi bias built in the model's dtype (bfloat16)",
           "precision", (T_PRECISION,), EAGER_BF16, "bloom-560m,llama3",
           reason=WITHIN_BF16_ROW),
    Mutant("torch-rope-angles-in-bfloat16", TR, "compute = compute_dtype(dtype)", "compute = dtype",
           "RoPE angles computed in the model's dtype (bfloat16)", "precision", (T_PRECISION,), TORCH_BF16,
           "llama3", reason=WITHIN_BF16_ROW),
    Mutant("jax-rope-in-bfloat16", JR, "cos_sin(rope, positions, context, jnp.promote_types(x.dtype, jnp.float32))",
           "(t.astype(jnp.promote_types(x.dtype, jnp.float32)) for t in cos_sin(rope, positions, context, x.dtype))",
           "RoPE cos / sin rounded to the model's dtype (bfloat16) before the rotation", "precision",
           (J_PRECISION,), JAX_BF16, "llama3", reason=WITHIN_BF16_ROW),
    Mutant("torch-loss-not-upcast", "impl_torch/objective.py", "ce = F.cross_entropy(upcast(logits).flatten(0, 1)",
           "ce = F.cross_entropy(logits.flatten(0, 1)", "cross-entropy over bfloat16 logits", "precision",
           (T_PRECISION,), TORCH_BF16, "llama3", reason=WITHIN_BF16_ROW),
)


def by_id(ids: list[str] | None = None) -> list[Mutant]:
    """The mutants named by `ids` (all of them for None), in the list's order; an unknown id is an error."""
    if not ids:
        return list(MUTANTS)
    known = {m.id for m in MUTANTS}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise KeyError(f"unknown mutant id(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [m for m in MUTANTS if m.id in ids]
