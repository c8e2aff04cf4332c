"""The golden cases: which inputs each architecture is checked on, and how they are computed.

Every arch gets the same four cases, built from `tiny(preset)` with arch-independent rules:

  prefill-b2-s7    batch 2, odd length 7; logits, loss and captured intermediates
  prefill-b3-s13   batch 3, odd length 13; logits, loss and captured intermediates
  decode-b2-p5-n6  a 5-token prompt, then 6 tokens one at a time through the KV cache
  long-b2-sN       the arch's hard part: long enough that the position scheme bends
                   (N > 2x a RoPE scaling's original context, ALiBi's small slopes add up)

Rules that pick the data (flags, never preset names): an ALiBi model gets 6 heads, a
non-power-of-two count where the slope formula has its special branch, with d_model and d_ff
widened to keep head_dim and the d_ff / d_model ratio (MPT's 4x MLP is fixed in transformers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lmref import impl_numpy
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params, uniform01
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


def case_specs(config: ModelConfig) -> list[CaseSpec]:
    n = long_seq_len(config)
    return [
        CaseSpec("prefill-b2-s7", "prefill", 2, 7, seed=1, capture=True,
                 description="prefill, batch 2, odd length"),
        CaseSpec("prefill-b3-s13", "prefill", 3, 13, seed=2, capture=True,
                 description="prefill, batch 3, odd length"),
        CaseSpec("decode-b2-p5-n6", "decode", 2, 11, seed=3, prompt_len=5,
                 description="5-token prefill then 6 single-token steps through the KV cache"),
        CaseSpec(f"long-b2-s{n}", "prefill", 2, n, seed=4,
                 description=f"{n} positions: RoPE scaling / ALiBi / learned positions far from 0"),
    ]


def case_tokens(arch: str, spec: CaseSpec, vocab_size: int) -> np.ndarray:
    """Deterministic token ids [batch, seq], from the same counter-based stream as the init."""
    u = uniform01(spec.seed, f"tokens/{arch}/{spec.name}", spec.batch * spec.seq)
    return np.floor(u * vocab_size).astype(np.int64).reshape(spec.batch, spec.seq)


@dataclass
class ComputedCase:
    arch: str
    spec: CaseSpec
    config: ModelConfig
    tokens: np.ndarray
    expected: dict[str, np.ndarray]  # logits, loss and "capture.<name>" arrays, all float64


def compute_case(arch: str, spec: CaseSpec) -> ComputedCase:
    """Run the float64 golden on one case."""
    get_preset(arch)  # a clear error for an unknown arch
    config = case_config(arch)
    params = init_params(config, spec.seed)
    tokens = case_tokens(arch, spec, config.vocab_size)
    capture: dict | None = {} if spec.capture else None
    if spec.kind == "decode":
        logits = impl_numpy.decode(config, params, tokens, spec.prompt_len)
    else:
        logits = impl_numpy.forward(config, params, tokens, capture=capture)
    expected = {"logits": logits, "loss": np.array([impl_numpy.loss(config, params, tokens)])}  # [1]: safetensors has no 0-d
    for name, value in (capture or {}).items():
        expected[f"capture.{name}"] = value
    assert all(np.all(np.isfinite(v)) for v in expected.values()), f"{arch}/{spec.name}: non-finite golden"
    return ComputedCase(arch, spec, config, tokens, expected)
