"""Negative and positive controls: implementations the conformance suite must judge right.

Each negative control is the golden computed in float32 (as a real port would run) with one
mistake that people really make when porting a model; each must FAIL the suite for the
arch it breaks.  The positive control is the same float32 computation with no mistake; it
must PASS everywhere.  Together they calibrate the float32 tolerance row
(conformance/tolerances.py), and the margins are recorded in conformance/TOLERANCES.md.

Usable from the command line as well, e.g.
    pytest conformance/ --arch llama3 --impl tests.controls:rope_interleaved
"""

from __future__ import annotations

import numpy as np

from lmref import impl_numpy
import lmref.impl_numpy.alibi
import lmref.impl_numpy.attention
import lmref.impl_numpy.masks
import lmref.impl_numpy.model
import lmref.impl_numpy.norms  # noqa: F401  (impl_numpy.alibi, .attention, .masks, .model, .norms below)
from tests.control_kinds import ConfigMistake, Control, Float32Golden, PatchMistake, _float32
from tests.controls_moe import MOE_CONTROLS
from tests.controls_parallel import PARALLEL_CONTROLS
from tests.controls_vision import VISION_CONTROLS


# --- the wrong functions ------------------------------------------------------------------------


def _kv_heads_tiled(kv: np.ndarray, group_size: int) -> np.ndarray:
    """GQA grouped wrong: query head h reads kv head h % n_kv (np.tile) instead of h // group."""
    return np.tile(kv, (1, 1, group_size, 1))


def _scores_unscaled(config, plan, q, k, q_pos, k_pos):
    """Missing the 1/sqrt(head_dim) factor on the scores."""
    scores = np.einsum("bqhd,bkhd->bhqk", q, k)
    return np.where(impl_numpy.masks.visible(plan.mask, q_pos, k_pos), scores, -np.inf)


def _mask_sees_next(q_positions, k_positions):
    """Causal mask off by one: each query also sees the next key."""
    return k_positions[None, :] <= q_positions[:, None] + 1


def _window_one_too_wide(q_positions, k_positions, window):
    """Sliding window off by one: q - W <= k <= q, W + 1 keys (the key exactly W back seen)."""
    return impl_numpy.masks.causal(q_positions, k_positions) & (k_positions[None, :] >= q_positions[:, None] - window)


def _window_one_too_narrow(q_positions, k_positions, window):
    """Sliding window off by one the other way: q - W + 1 < k <= q, W - 1 keys."""
    return impl_numpy.masks.causal(q_positions, k_positions) & (k_positions[None, :] > q_positions[:, None] - window + 1)


def _qk_norm_skipped(config, params, prefix, x):
    """The q/k norm left out (a port that loads q_norm / k_norm and never applies them)."""
    return x


def _qk_norm_per_head_for_projection(config, params, prefix, x):
    """OLMo 2's whole-projection QK norm computed per head, the weight split by head."""
    hd = config.head_dim
    heads = x.reshape(*x.shape[:-1], x.shape[-1] // hd, hd)  # [B, S, heads * hd] -> [B, S, heads, hd]
    normed = impl_numpy.norms.rms_norm(heads, config.norm_eps).reshape(x.shape)  # back to [B, S, heads * hd]
    return normed * params[f"{prefix}.weight"]


def _post_norm_before_sublayer(config, plan, params, name, h, compute):
    """OLMo 2's post-sublayer norm applied to the sublayer's input (the pre-norm habit)."""
    return compute(impl_numpy.norms.apply_norm(config, params, f"layers.{plan.index}.{name}_post_norm", h))


def _sandwich_without_post_norms(config, plan, params, name, h, compute):
    """Gemma 2's sandwich read as plain pre-norm: the post norms loaded and never applied."""
    return compute(impl_numpy.norms.apply_norm(config, params, f"layers.{plan.index}.{name}_norm", h))


def _naive_alibi_slopes(n_heads: int, max_bias: float = 8.0, rule: str = "press") -> np.ndarray:
    """2^(-8h/n) for every n whatever the rule: Press's slopes only for powers of two."""
    return np.array([2.0 ** (-max_bias * h / n_heads) for h in range(1, n_heads + 1)])


def _untied_head_as_tied(config, params, h):
    """Uses the token embedding as the head although the model has its own head weight."""
    return h @ params["embed.tokens"].T


def _positions_off_by_one(config, params, tokens, positions, images=None):
    """Learned positions read one row too far."""
    h = params["embed.tokens"][tokens]
    return h + params["embed.positions"][positions + 1][None, :, :]


def _step(config, params, token, cache):
    return impl_numpy.forward(config, params, token, cache=cache)


def _step_at_position_0(config, params, token, cache):
    """The step with its position restarted at 0; its keys are still appended."""
    length = cache.length
    cache.length = 0
    logits = impl_numpy.forward(config, params, token, cache=cache)
    cache.length = length + 1
    return logits


def _cached_decode(config, params, tokens, prompt_len, cache, step=_step) -> np.ndarray:
    """Logits [B, S, V]: the first `prompt_len` tokens prefilled into `cache`, then one token
    per `step`."""
    steps = [impl_numpy.forward(config, params, tokens[:, :prompt_len], cache=cache)]
    steps += [step(config, params, tokens[:, t : t + 1], cache) for t in range(prompt_len, tokens.shape[1])]
    return np.concatenate(steps, axis=1)


class DecodePositionsRestart(Float32Golden):
    """A KV-cache bug: every decode step is given position 0 (prefill is right)."""

    name = "decode_positions_restart"

    def decode(self, config, params, tokens, prompt_len):
        config = self.adjust(config)
        return _cached_decode(config, _float32(params), tokens, prompt_len, impl_numpy.KVCache.empty(config),
                              _step_at_position_0)


class DecodeCacheKeptAcrossCalls(Float32Golden):
    """A KV-cache bug: one cache for the adapter's life, never emptied between calls (its first
    decode is right; the next one attends to the last call's keys, at positions after them)."""

    name = "decode_cache_kept_across_calls"

    def __init__(self):
        self.cache = None

    def decode(self, config, params, tokens, prompt_len):
        config = self.adjust(config)
        if self.cache is None:
            self.cache = impl_numpy.KVCache.empty(config)
        return _cached_decode(config, _float32(params), tokens, prompt_len, self.cache)


# Qwen 3, Gemma 1/2/3, OLMo 2: one control per knob they bring (issue 11).
ISSUE_11_CONTROLS: list[Control] = [
    Control("gemma-7b", ConfigMistake("gemma_norm_w_for_1_plus_w", norm_unit_offset=False),
            "Gemma's RMSNorm scaled by the stored w instead of (1 + w)"),
    Control("gemma-7b", ConfigMistake("gemma_embedding_unscaled", embedding_scale="none"),
            "Gemma's embeddings not multiplied by sqrt(d_model)"),
    Control("gemma2-9b", ConfigMistake("gemma2_attn_softcap_dropped", attn_softcap=None),
            "Gemma 2 without its attention softcap (50)"),
    Control("gemma2-9b", ConfigMistake("gemma2_final_softcap_dropped", final_logit_softcap=None),
            "Gemma 2 without its final logit softcap (30)"),
    Control("gemma2-27b", ConfigMistake("gemma2_query_scale_head_dim", query_scale_dim=None),
            "Gemma 2 27B scores scaled by head_dim^-0.5 instead of query_pre_attn_scalar^-0.5"),
    Control("gemma2-9b", PatchMistake("gemma2_post_norms_dropped", impl_numpy.model, "sublayer",
                                      _sandwich_without_post_norms),
            "Gemma 2's sandwich norms read as pre-norm: the post norms never applied"),
    Control("gemma3-4b", ConfigMistake("gemma3_local_global_theta_swapped", rope_theta=10_000.0,
                                       rope_theta_local=1_000_000.0),
            "Gemma 3's local (1e4) and global (1e6) RoPE bases swapped"),
    Control("qwen3-8b", PatchMistake("qwen3_qk_norm_dropped", impl_numpy.attention, "qk_norm", _qk_norm_skipped),
            "Qwen 3 without its per-head q/k RMSNorm"),
    Control("olmo2-7b", PatchMistake("olmo2_qk_norm_per_head", impl_numpy.attention, "qk_norm",
                                     _qk_norm_per_head_for_projection),
            "OLMo 2's whole-projection q/k norm computed per head"),
    Control("olmo2-7b", PatchMistake("olmo2_post_norm_moved_before", impl_numpy.model, "sublayer",
                                     _post_norm_before_sublayer),
            "OLMo 2's post-sublayer norms applied before the sublayer"),
]

NEGATIVE_CONTROLS: list[Control] = [
    Control("llama3", ConfigMistake("rope_interleaved", rope_layout="interleaved"),
            "RoPE pairs (2i, 2i+1) instead of the checkpoint's rotate-half (i, i + d/2)"),
    Control("llama3", ConfigMistake("rope_theta_1e4", rope_theta=10_000.0),
            "LLaMA 3 run with LLaMA 2's RoPE theta 1e4 instead of 5e5"),
    Control("llama3.1", ConfigMistake("llama3_scaling_missing", rope_scaling=None),
            "Llama 3.1 without its llama3 RoPE frequency scaling"),
    Control("llama3", PatchMistake("gqa_grouped_wrong", impl_numpy.attention, "expand_kv_heads", _kv_heads_tiled),
            "GQA: query head h reads kv head h % n_kv instead of h // group"),
    Control("llama1", PatchMistake("missing_attn_scale", impl_numpy.attention, "attention_scores", _scores_unscaled),
            "attention scores not multiplied by 1/sqrt(head_dim)"),
    Control("mpt", PatchMistake("alibi_slopes_naive", impl_numpy.attention, "alibi_slopes", _naive_alibi_slopes),
            "MPT's ALiBi slopes as 2^(-8h/n) for 6 heads (OLMo's rule; Press's differs but at powers of two)"),
    Control("olmo-alibi", ConfigMistake("alibi_slopes_press", alibi_slopes="press"),
            "OLMo's ALiBi run with Press et al.'s slopes for 6 heads instead of 2^(-8h/n)"),
    Control("gpt2", ConfigMistake("layernorm_eps_1e-6", norm_eps=1e-6),
            "GPT-2 LayerNorm eps 1e-6 instead of 1e-5"),
    Control("llama2", ConfigMistake("rmsnorm_eps_1e-6", norm_eps=1e-6),
            "Llama 2 RMSNorm eps 1e-6 (the HF class default) instead of the checkpoint's 1e-5"),
    Control("gpt2", ConfigMistake("gelu_exact_for_tanh", activation="gelu"),
            "GPT-2 with exact erf GELU instead of its tanh approximation (gelu_new)"),
    Control("llama2", PatchMistake("causal_mask_off_by_one", impl_numpy.masks, "causal", _mask_sees_next),
            "causal mask lets each query see the next key"),
    Control("llama2", PatchMistake("tied_head_for_untied", impl_numpy.model, "head", _untied_head_as_tied),
            "the token embedding used as the head of an untied model"),
    Control("gpt2", PatchMistake("learned_positions_off_by_one", impl_numpy.model, "embed", _positions_off_by_one),
            "learned position table indexed from 1"),
    Control("olmo", ConfigMistake("olmo_rmsnorm", norm="rmsnorm"),
            "OLMo's non-parametric LayerNorm replaced by RMSNorm (no mean subtraction)"),
    Control("mistral-7b", ConfigMistake("sliding_window_dropped", attn_pattern=("global",), sliding_window=None),
            "Mistral 7B v0.1 run without its sliding window (every key visible)"),
    Control("mistral-7b", PatchMistake("sliding_window_off_by_one", impl_numpy.masks, "sliding",
                                       _window_one_too_wide),
            "sliding window of W + 1 keys: q - W <= k <= q"),
    Control("mistral-7b", PatchMistake("sliding_window_too_narrow", impl_numpy.masks, "sliding",
                                       _window_one_too_narrow),
            "sliding window of W - 1 keys: q - W + 1 < k <= q"),
    Control("mistral-7b-v0.3", ConfigMistake("mistral_v03_theta_1e4", rope_theta=10_000.0),
            "Mistral v0.3 run with v0.1's RoPE theta 1e4 instead of 1e6"),
    Control("llama3", DecodePositionsRestart(),
            "KV-cache decode that gives every new token position 0"),
    Control("llama3", DecodeCacheKeptAcrossCalls(),
            "KV cache kept from one decode call to the next, never emptied"),
    *ISSUE_11_CONTROLS,
    *MOE_CONTROLS,
    *PARALLEL_CONTROLS,
    *VISION_CONTROLS,
]

POSITIVE_CONTROL = Float32Golden()

BY_NAME: dict[str, Float32Golden] = {POSITIVE_CONTROL.name: POSITIVE_CONTROL} | {
    c.adapter.name: c.adapter for c in NEGATIVE_CONTROLS
}


def __getattr__(name: str) -> Float32Golden:
    """`--impl tests.controls:<name>` (PEP 562 module attribute), e.g. `rope_interleaved`."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise AttributeError(f"no control named {name!r}; controls: {', '.join(BY_NAME)}") from None


# --- calibration -----------------------------------------------------------------------------


def run_arch(adapter, arch: str, store=None) -> list:
    """Every applicable (case, capability) check of `arch` for `adapter`: [(case id, capability, CheckResult)]."""
    from lmref.conformance.adapters import CAPABILITIES
    from lmref.conformance.runner import applies, run_check
    from lmref.conformance.store import GoldenStore

    store = store or GoldenStore()
    results = []
    for name in store.case_names(arch):
        case = store.load(arch, name)
        for capability in CAPABILITIES:
            if applies(case.meta, capability):
                results.append((case.id, capability, run_check(case, adapter, capability)))
    return results


def worst_ratio(results: list, row: str = "float32") -> float:
    """The largest metric / threshold over the logits checks (nmse and kl) and the loss checks
    (|out - ref| over the allowed error): above 1 fails the gate."""
    from lmref.conformance.tolerances import DEFAULT_ROWS

    tol = DEFAULT_ROWS[row]
    ratios = [0.0]
    for _, capability, result in results:
        if capability in ("forward", "decode") and "nmse" in result.metrics:
            ratios += [result.metrics["nmse"] / tol.nmse, result.metrics["kl_max"] / tol.kl]
        if capability == "loss" and "abs_err" in result.metrics:
            ratios.append(result.metrics["abs_err"] / (tol.loss_atol + tol.loss_rtol * abs(result.metrics["ref"])))
    return max(ratios)


def calibration_table() -> str:
    """The margins table of conformance/TOLERANCES.md: `python -m tests.controls`."""
    from lmref.spec.presets import PRESETS

    lines = ["| implementation | arch | checks failed | worst nmse or kl / threshold |", "|---|---|---|---|"]
    positive = max(worst_ratio(run_arch(POSITIVE_CONTROL, arch)) for arch in PRESETS)
    lines.append(f"| {POSITIVE_CONTROL.name} (correct) | all | 0 | {positive:.2g} |")
    for control in NEGATIVE_CONTROLS:
        results = run_arch(control.adapter, control.arch)
        failed = sum(r.status == "FAIL" for _, _, r in results)
        lines.append(f"| {control.adapter.name} | {control.arch} | {failed}/{len(results)} | "
                     f"{worst_ratio(results):.2g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(calibration_table())
