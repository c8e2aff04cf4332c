"""validate-onnx on a mixture of experts: tokens whose routing cannot flip, and the graph's
choice of experts compared with the golden's.

A "moe" layer chooses the k experts of largest router logit (softmax and sigmoid keep their
order), so its choice changes only when rounding moves the k-th and the (k+1)-th logits past
each other, and then the token's output moves by O(1): far past any tolerance, and on to
every later position through the attention.  float32 keeps router logits within ~1e-6 of
the float64 golden, so random tokens would flip rarely, but a flip is a false FAIL that no
tolerance explains.  So, as the golden cases do (conformance/cases.py `routed_tokens`),
validate-onnx picks every token of its rows, prompts and decode tokens alike, so that at
every "moe" layer the golden's k-th and (k+1)-th router logits are at least ROUTING_MARGIN
(0.1, conformance/routing.py) apart: float32 cannot flip such a choice.  And it compares
the choice itself: the graph's `selected_experts.{i}` outputs (the TopK indices each layer
scattered, export/decoder.py) at every real position, prefill and decode steps, must be the
golden's experts (as sets); a FAIL names the layer, the position and the experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmref.conformance.cases import CaseSpec, expected_routing, routed_tokens
from lmref.conformance.routing import ROUTING_MARGIN, first_flip, smallest_gaps
from lmref.export.decoder import expert_names
from lmref.spec.captures import moe_layers
from lmref.spec.config import ModelConfig

SCENARIO = "validate-onnx"  # the label of the token stream (spec.params.uniform01)


def routed_rows(config: ModelConfig, params: dict, lengths: list[int], seed: int) -> list[np.ndarray]:
    """One row of tokens per length, each token keeping every routing gap >= ROUTING_MARGIN in
    the golden (the model is causal: a prefix of a routed row is routed).  ValueError when no
    candidate token clears the margin at some position (a router with near ties everywhere)."""
    spec = CaseSpec(SCENARIO, "prefill", batch=len(lengths), seq=max(lengths), seed=seed)
    try:
        rows = routed_tokens(config.name, spec, config, params)  # [B, max(lengths)]
    except RuntimeError as e:
        raise ValueError(f"validate-onnx needs tokens whose MoE routing has a margin: {e}") from None
    return [row[:n] for row, n in zip(rows, lengths)]


def _concat(rows: list[np.ndarray]) -> np.ndarray:
    """Per-row arrays [n_b, ...] -> [1, sum n_b, ...]: row 0's real positions, then row 1's."""
    return np.concatenate(rows)[None]


@dataclass(frozen=True)
class RoutingCheck:
    """The graph's chosen experts against the golden's at every real position of every MoE
    layer; `failed` lists the failure (empty: PASS)."""

    provider: str
    reference: str
    compared: int  # (layer, position) pairs
    smallest_gap: float  # the golden's smallest z_(k) - z_(k+1) over them
    failed: list[str]
    phase: str = "routing"

    def line(self) -> str:
        verdict = "PASS" if not self.failed else "FAIL"
        text = (f"  {verdict} routing vs {self.reference}: {self.compared} (MoE layer, real position) pairs, "
                f"smallest golden gap between the k-th and (k+1)-th router logits {self.smallest_gap:.3g} "
                f"(tokens chosen for gaps >= {ROUTING_MARGIN})")
        return text + "".join(f"\n       failed: {f}" for f in self.failed)


def check_routing(provider: str, reference: str, config: ModelConfig, graph: dict[str, list[np.ndarray]],
                  captures: list[dict]) -> RoutingCheck:
    """RoutingCheck of the graph's rows (`graph`: selected_experts.{i} -> per row [n_b, k]) against
    the golden's router logits (`captures`: per row, impl_numpy's capture of it unpadded,
    `layers.{i}.router` [1, n_b, E])."""
    k = config.moe.n_experts_per_token
    layers = moe_layers(config)
    router = {f"layers.{i}.router": _concat([c[f"layers.{i}.router"][0] for c in captures]) for i in layers}
    golden = expected_routing(config, router)  # ranked k + 1 best experts and their logits, [1, N, k + 1]
    top = {f"layers.{i}": golden[f"routing.layers.{i}"] for i in layers}
    scores = {f"layers.{i}": golden[f"routing_logits.layers.{i}"] for i in layers}
    got = {f"layers.{i}": _concat(graph[name]) for i, name in zip(layers, expert_names(config))}
    gap = float(smallest_gaps(config, router).min())
    compared = sum(z.shape[1] for z in router.values())
    found = first_flip(top, scores, got, k)
    failed = [] if found is None else [f"{found[0]} of {compared} pairs chose other experts than the golden; "
                                       f"first: {found[1]}"]
    return RoutingCheck(provider, reference, compared, gap, failed)
