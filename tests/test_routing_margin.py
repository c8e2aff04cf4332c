"""The routing margin holds up in bfloat16 (issue 12): both twins, run in bfloat16 on every
stored MoE case, choose the golden's experts at every token and MoE layer, and the error of
their router-logit differences stays below the margin the generator keeps
(conformance/routing.py, ROUTING_MARGIN): a flip needs that error to exceed the token's gap,
which is at least the margin, so the choice is safe by construction rather than by luck."""

from __future__ import annotations

import numpy as np
import pytest

from lmref.conformance.routing import ROUTING_MARGIN
from lmref.conformance.runner import PASS, run_check
from lmref.conformance.store import GoldenStore
from lmref.spec.captures import moe_layers

STORE = GoldenStore()
MOE_CASES = [(arch, name) for arch in STORE.archs() for name in STORE.case_names(arch)
             if "routing" in STORE.load_meta(arch, name)]
IDS = [f"{a}-{n}" for a, n in MOE_CASES]


def _adapter(twin: str):
    if twin == "torch":
        from lmref.impl_torch.adapter import TorchAdapter

        return TorchAdapter(dtype="bfloat16", device="cpu")
    from lmref.impl_jax.adapter import JaxAdapter

    return JaxAdapter("bfloat16")


def gap_error(case, captured: dict) -> float:
    """The largest error, over tokens and MoE layers, of the difference between the router
    logits of the golden's k-th and (k+1)-th expert: a flip needs it to exceed the gap."""
    k = case.config.moe.n_experts_per_token
    worst = 0.0
    for i in moe_layers(case.config):
        ranked = case.expected[f"routing.layers.{i}"]  # [B, S, k + 1], the golden's best first
        golden = case.expected[f"routing_logits.layers.{i}"]
        if ranked.shape[-1] <= k:
            continue  # every expert chosen: nothing can flip
        z = np.asarray(captured[f"layers.{i}.router"], dtype=np.float64)
        twin = np.take_along_axis(z, ranked, axis=-1)
        error = (twin[..., k - 1] - twin[..., k]) - (golden[..., k - 1] - golden[..., k])
        worst = max(worst, float(np.abs(error).max()))
    return worst


@pytest.mark.parametrize("twin", ["torch", "jax"])
@pytest.mark.parametrize("arch,name", MOE_CASES, ids=IDS)
def test_a_bfloat16_twin_chooses_the_golden_experts(twin, arch, name):
    case, adapter = STORE.load(arch, name), _adapter(twin)
    result = run_check(case, adapter, "routing")
    assert result.status == PASS, result.message
    error = gap_error(case, adapter.capture(case.config, case.params(), case.tokens))
    # The margin is what protects the choice: the bfloat16 error of every gap stays below it.
    assert error < ROUTING_MARGIN, f"{twin} bfloat16 gap error {error:.3g} against the margin {ROUTING_MARGIN}"
