"""The golden cases: which inputs each architecture is checked on, and how they are computed.

Every arch gets the same four cases, built from `tiny(preset)` with arch-independent rules:

  prefill-b2-s7    batch 2, odd length 7; logits, loss and captured intermediates
  prefill-b3-s13   batch 3, odd length 13; logits, loss and captured intermediates
  decode-b2-p5-n6  a 5-token prompt, then 6 tokens one at a time through the KV cache
  long-b2-sN       the arch's hard part: long enough that the position scheme bends
                   (N > 2x a RoPE scaling's original context, ALiBi's small slopes add up)
  decode-cross-b2-pP-n5  LongRoPE only: a prompt of P = O - 2 positions, then 5 steps that take
                   the sequence past the original context O (the factors change under the cache)
  prefill-image*, decode-image-*  a model with a vision tower: images in the sequence
                   (conformance/image_cases.py); its text cases hold no image placeholder

Rules that pick the data (flags, never preset names): an ALiBi model gets 6 heads, a
non-power-of-two count where the slope formula has its special branch, with d_model and d_ff
widened to keep head_dim and the d_ff / d_model ratio (MPT's 4x MLP is fixed in transformers).
A mixture of experts gets tokens that routing cannot flip: `routed_tokens` picks each token
so that at every MoE layer its k-th and (k+1)-th router logits are at least ROUTING_MARGIN
apart (conformance/routing.py), and the case stores the experts chosen and the smallest gap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lmref import impl_numpy
from lmref.conformance.image_cases import case_pixels, image_case_specs, place_images, text_ids
from lmref.conformance.routing import ROUTING_MARGIN, smallest_gaps
from lmref.impl_numpy.cache import KVCache
from lmref.impl_numpy.moe import top_k
from lmref.spec.captures import moe_layers
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params, uniform01
from lmref.spec.plan import original_context
from lmref.spec.presets import get_preset, tiny

LONG_SEQ_LEN = 160


@dataclass(frozen=True)
class CaseSpec:
    name: str
    kind: str  # "prefill" or "decode"
    batch: int
    seq: int
    seed: int
    prompt_len: int | None = None
    capture: bool = False
    description: str = ""
    images: tuple[tuple[int, int], ...] = ()  # (batch row, first position) of each image's placeholders


def case_config(arch: str) -> ModelConfig:
    """The tiny config every case of `arch` runs."""
    config = tiny(arch)
    if config.position == "alibi":
        # 6 heads: not a power of two, so the interleaved slopes of 2n' heads are used.
        d_model = 6 * config.head_dim
        config = dataclasses.replace(config, n_heads=6, n_kv_heads=6, d_model=d_model,
                                     d_ff=round(d_model * config.d_ff / config.d_model))
    return config


def long_seq_len(config: ModelConfig) -> int:
    s = config.rope_scaling
    if s is not None and s.original_max_seq_len is not None:
        return min(config.max_seq_len, max(LONG_SEQ_LEN, 2 * s.original_max_seq_len + 1))
    return min(config.max_seq_len, LONG_SEQ_LEN)


# LongRoPE's decode case: a prompt CROSS_BEFORE positions short of the original context O, then
# CROSS_STEPS single steps, so that the cache is filled with the short factors and the third step
# takes the sequence past O (spec/MATH.md, "LongRoPE": step t's logits are a prefill's of 0..t).
CROSS_BEFORE, CROSS_STEPS = 2, 5


def crossing_case(config: ModelConfig) -> list[CaseSpec]:
    """The decode case that crosses a LongRoPE model's original context (none for other models)."""
    o = original_context(config)
    if o is None:
        return []
    prompt = o - CROSS_BEFORE
    if prompt < 1 or prompt + CROSS_STEPS > config.max_seq_len:
        raise ValueError(f"{config.name}: original context {o} leaves no room for a decode that crosses it "
                         f"(prompt {prompt}, {CROSS_STEPS} steps, max_seq_len {config.max_seq_len})")
    return [CaseSpec(f"decode-cross-b2-p{prompt}-n{CROSS_STEPS}", "decode", 2, prompt + CROSS_STEPS, seed=5,
                     prompt_len=prompt, description=f"{prompt}-token prefill (short factors) then {CROSS_STEPS} "
                     f"single-token steps past the original context {o}: the cache is recomputed")]


def crosses_during_decode(config: ModelConfig, spec: CaseSpec) -> bool:
    """Whether a decode case's steps take a LongRoPE sequence past its original context: its
    decode logits are then not the whole sequence's prefill (spec/MATH.md, "LongRoPE")."""
    o = original_context(config)
    return o is not None and spec.prompt_len <= o < spec.seq


def case_specs(config: ModelConfig) -> list[CaseSpec]:
    n = long_seq_len(config)
    return [
        CaseSpec("prefill-b2-s7", "prefill", 2, 7, seed=1, capture=True,
                 description="prefill, batch 2, odd length"),
        CaseSpec("prefill-b3-s13", "prefill", 3, 13, seed=2, capture=True,
                 description="prefill, batch 3, odd length"),
        *image_case_specs(config, CaseSpec, "prefill"),
        CaseSpec("decode-b2-p5-n6", "decode", 2, 11, seed=3, prompt_len=5,
                 description="5-token prefill then 6 single-token steps through the KV cache"),
        *crossing_case(config),
        *image_case_specs(config, CaseSpec, "decode"),
        CaseSpec(f"long-b2-s{n}", "prefill", 2, n, seed=4,
                 description=f"{n} positions: RoPE scaling / ALiBi / learned positions far from 0"),
    ]


def case_tokens(arch: str, spec: CaseSpec, config: ModelConfig) -> np.ndarray:
    """Deterministic token ids [batch, seq], from the same counter-based stream as the init;
    the image placeholders where the case puts images, and nowhere else."""
    u = uniform01(spec.seed, f"tokens/{arch}/{spec.name}", spec.batch * spec.seq)
    tokens = text_ids(config, u).reshape(spec.batch, spec.seq)
    return place_images(config, tokens, spec.images) if spec.images else tokens


# Candidates per position, tried in blocks: the first block holding a token that clears the
# margin gives its best token (the largest smallest-gap).  At ROUTING_MARGIN 0.1 between 4% (128
# experts, top-8) and 60% (8 experts, top-2) of tokens qualify, so a block of 32 nearly always
# holds one; when all of them fail, the generator says so instead of lowering the margin.
CANDIDATES, BLOCK = 256, 32


def _row_cache(cache: KVCache, row: int, copies: int) -> KVCache:
    """A cache holding `copies` copies of batch row `row` of `cache` (read-only views: the
    cache only ever concatenates onto them)."""
    def take(a):  # [B, T, ...] -> [copies, T, ...]
        return None if a is None else np.broadcast_to(a[row : row + 1], (copies, *a.shape[1:]))

    return KVCache(keys=[take(k) for k in cache.keys], values=[take(v) for v in cache.values],
                   positions=list(cache.positions), length=cache.length,
                   tokens=take(cache.tokens))  # tokens: [copies, T] or None


def routed_tokens(arch: str, spec: CaseSpec, config: ModelConfig, params: dict,
                  margin: float | None = None) -> np.ndarray:
    """Token ids [batch, seq] whose every token has a routing gap >= `margin` (ROUTING_MARGIN by
    default) at every MoE layer.  The model is causal, so the tokens are chosen left to right: at each position a
    block of candidates (a deterministic stream) runs as one batch through copies of the row's
    KV cache, and the best candidate of the first block with one that clears the margin is kept."""
    margin = ROUTING_MARGIN if margin is None else margin
    rows = []
    for b in range(spec.batch):
        cache, row = KVCache.empty(config), []
        for t in range(spec.seq):
            u = uniform01(spec.seed, f"tokens/{arch}/{spec.name}/{b}/{t}", CANDIDATES)
            candidates = text_ids(config, u)
            token, cache = _best_candidate(config, params, cache, candidates, margin)
            if token is None:
                raise RuntimeError(f"{arch}/{spec.name}: none of {CANDIDATES} candidate tokens at batch {b}, "
                                   f"position {t} keeps every routing gap >= {margin}")
            row.append(token)
        rows.append(row)
    return np.array(rows, dtype=np.int64)


def _best_candidate(config: ModelConfig, params: dict, cache: KVCache, candidates: np.ndarray, margin: float
                    ) -> tuple[int | None, KVCache]:
    """(the chosen next token, the cache with it appended), or (None, cache) when no candidate qualifies."""
    for start in range(0, len(candidates), BLOCK):
        block = candidates[start : start + BLOCK, None]  # [N, 1]
        trial = _row_cache(cache, 0, len(block)) if cache.length else KVCache.empty(config)
        captured: dict = {}
        impl_numpy.forward(config, params, block, cache=trial, capture=captured)
        gaps = smallest_gaps(config, captured)[:, 0]  # [N]
        if gaps.max() >= margin:
            best = int(np.argmax(gaps))
            return int(block[best, 0]), _row_cache(trial, best, 1)
    return None, cache


def expected_routing(config: ModelConfig, captured: dict) -> dict[str, np.ndarray]:
    """"routing.layers.{i}": the golden's k + 1 best experts per token [B, S, k + 1] (int64, best
    first; the first k are chosen) and "routing_logits.layers.{i}": their router logits."""
    k = min(config.moe.n_experts_per_token + 1, config.moe.n_experts)
    out = {}
    for i in moe_layers(config):
        z = captured[f"layers.{i}.router"]  # [B, S, E]
        ranked = top_k(z, k)  # [B, S, k + 1]: softmax and sigmoid keep the logits' order
        out[f"routing.layers.{i}"] = ranked.astype(np.int64)
        out[f"routing_logits.layers.{i}"] = np.take_along_axis(z, ranked, axis=-1)
    return out


@dataclass
class ComputedCase:
    arch: str
    spec: CaseSpec
    config: ModelConfig
    tokens: np.ndarray
    expected: dict[str, np.ndarray]  # logits, loss and "capture.<name>" arrays, all float64
    pixel_values: np.ndarray | None = None  # [n_images, C, H, W] of a multimodal case


def compute_case(arch: str, spec: CaseSpec) -> ComputedCase:
    """Run the float64 golden on one case."""
    get_preset(arch)  # a clear error for an unknown arch
    config = case_config(arch)
    params = init_params(config, spec.seed)
    routed = config.moe is not None
    tokens = routed_tokens(arch, spec, config, params) if routed else case_tokens(arch, spec, config)
    pixels = case_pixels(arch, spec.name, spec.seed, config, len(spec.images)) if spec.images else None
    captured: dict = {}
    forward_logits = impl_numpy.forward(config, params, tokens, pixel_values=pixels, capture=captured)
    logits = (impl_numpy.decode(config, params, tokens, spec.prompt_len, pixel_values=pixels)
              if spec.kind == "decode" else forward_logits)
    loss = impl_numpy.loss(config, params, tokens, pixel_values=pixels)
    expected = {"logits": logits, "loss": np.array([loss])}  # [1]: safetensors has no 0-d
    if spec.kind == "decode" and crosses_during_decode(config, spec):
        expected["prefill_logits"] = forward_logits  # what forward gives; the decode's differ by definition
    if spec.capture:
        expected |= {f"capture.{name}": value for name, value in captured.items()}
    if routed:
        expected |= expected_routing(config, captured)
        expected["routing_min_gap"] = np.array([float(smallest_gaps(config, captured).min())])
    assert all(np.all(np.isfinite(v)) for v in expected.values()), f"{arch}/{spec.name}: non-finite golden"
    return ComputedCase(arch, spec, config, tokens, expected, pixels)
