"""Shared pieces of the torch twin's tests: drawing an example, building models, metrics.

Tolerances are the conformance suite's rows (conformance/tolerances.py): float32 gates on
NMSE <= 1e-10 and |out - ref| <= 1e-4 + 1e-4 |ref|; float64 (a torch float64 model against
the golden, where only summation order differs) on NMSE <= 1e-24 and 1e-9 + 1e-9 |ref|.

The float32 row is calibrated on the presets.  For a drawn config that no float32 computation
meets it with, `float32_row` widens its NMSE gate as tests/conditioning.py says; the float64
checks, which pin the math, are never widened.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from hypothesis import note
from hypothesis import strategies as st

from lmref.conformance import cases
from lmref.conformance.cases import CaseSpec
from lmref.conformance.routing import smallest_gaps
from lmref.conformance.tolerances import DEFAULT_ROWS, Tolerance
from lmref.impl_torch import Transformer
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params
from tests.conditioning import FLOAT32_PEER_FACTOR, golden_float32_nmse, nmse
from tests.strategies import configs, seeds, token_batches

FLOAT64, FLOAT32 = DEFAULT_ROWS["float64"], DEFAULT_ROWS["float32"]
BFLOAT16, FLOAT16 = DEFAULT_ROWS["bfloat16"], DEFAULT_ROWS["float16"]


@st.composite
def examples(draw, min_seq: int = 1, drawn=configs) -> tuple[ModelConfig, int, np.ndarray]:
    """(config, weight seed, tokens [B, S]) with S >= min_seq; the config from the strategy
    `drawn` makes (tests.strategies.configs, or moe_configs)."""
    config = draw(drawn())
    seed = draw(seeds)
    tokens = draw(token_batches(config).filter(lambda t: t.shape[1] >= min_seq))
    return config, seed, tokens


def params_of(config: ModelConfig, seed: int, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The example's weights; notes the lines that rebuild a failing example in Python."""
    note(f"config = {config!r}")
    note(f"params = spec.init_params(config, {seed})")
    note(f"tokens = np.array({tokens.tolist()})")
    return init_params(config, seed)


def build(config: ModelConfig, params: dict, dtype: torch.dtype = torch.float32,
          attn_impl: str = "sdpa", moe_dispatch: str = "sorted") -> Transformer:
    return Transformer.from_canonical(config, params, dtype=dtype, attn_impl=attn_impl, moe_dispatch=moe_dispatch)


def numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def float32_row(config: ModelConfig, params: dict, tokens: np.ndarray, ref: np.ndarray) -> Tolerance:
    """FLOAT32, its NMSE gate widened to FLOAT32_PEER_FACTOR x the NMSE of the golden run in
    float32 against `ref` (the float64 golden's logits) when that is larger."""
    peer = FLOAT32_PEER_FACTOR * golden_float32_nmse(config, params, tokens, ref)
    return FLOAT32 if peer <= FLOAT32.nmse else dataclasses.replace(FLOAT32, nmse=peer)


def assert_close(out, ref, row: Tolerance, what: str = "logits") -> None:
    """NMSE and elementwise |out - ref| <= atol + rtol |ref| of `row`; the message names the
    first offending element."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    err = np.abs(out - ref)
    bad = np.argwhere(err > row.atol + row.rtol * np.abs(ref))
    score = nmse(out, ref)
    where = f"first bad element {tuple(bad[0])}: {out[tuple(bad[0])]!r} vs {ref[tuple(bad[0])]!r}" if len(bad) else ""
    assert score <= row.nmse and not len(bad), (
        f"{what}: nmse {score:.3e} (max {row.nmse:.0e}), max abs err {err.max():.3e}, "
        f"{len(bad)} elements past {row.atol:.0e} + {row.rtol:.0e}|ref|; {where}"
    )


def routing_margin(config: ModelConfig, params: dict, tokens: np.ndarray) -> float:
    """The smallest gap between the k-th and (k+1)-th router logit of the golden, over the
    tokens and "moe" layers (inf without any): how far the tokens are from a routing flip,
    which moves a token's output by O(1) (conformance/routing.py)."""
    from lmref import impl_numpy

    if config.moe is None:
        return float(np.inf)
    captured: dict = {}
    impl_numpy.forward(config, params, tokens, capture=captured)
    return float(smallest_gaps(config, captured).min())


def routed_tokens(config: ModelConfig, params: dict, shape: tuple[int, int], margin: float,
                  seed: int = 0) -> np.ndarray:
    """Tokens [B, S] whose routing margin is at least `margin`: the golden cases' own search
    (conformance/cases.py `routed_tokens`), on a candidate stream of its own."""
    spec = CaseSpec(f"torch-tests-{seed}", "prefill", shape[0], shape[1], seed=seed)
    return cases.routed_tokens(config.name, spec, config, params, margin=margin)
