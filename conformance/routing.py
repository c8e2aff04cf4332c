"""The `routing` capability: does an implementation choose the golden's experts at every token?

A mixture-of-experts layer chooses k experts per token from its router logits z [E].  Both
router kinds rank the experts by a monotone function of z (softmax, sigmoid), so the choice
can only change when rounding moves the k-th and the (k+1)-th largest logits past each other.
When that happens the token's output moves by O(1), far beyond any tolerance, and a logits
check alone would report it as numeric drift.  So:

- every golden case of a MoE arch is built (conformance/cases.py, `routed_tokens`) so that at
  every token and MoE layer the gap z_(k) - z_(k+1) is at least ROUTING_MARGIN, and case.json
  records the smallest gap in the case;
- an implementation's choice can only differ where the error of its logit difference
  z_(k) - z_(k+1) exceeds the gap;
- `routing(config, params, tokens) -> {"layers.{i}": int array [B, S, k]}` (the experts chosen
  for each token, in any order) is compared as sets; a FAIL names the layer, the token and the
  golden's logits of the expert it should have chosen and of the one it chose instead.

ROUTING_MARGIN = 0.1, in logits (the router's own units; at case size they have a standard
deviation near 1).  float32 (unit roundoff 2^-24) leaves router logits within ~1e-6 of the
golden: 1e5 times below the margin.  bfloat16 (8 significant bits, unit roundoff 2^-8 ~ 0.004)
carries about 1% relative error in the residual stream into the router's input after two
layers.  tests/test_routing_margin.py runs both twins in bfloat16 on every stored case and
measures the error of each token's k-th minus (k+1)-th logit difference: at most 0.073 (the
torch twin) and 0.081 (JAX), both of which compute the router in float32 (spec/MATH.md,
"Precision policy"), on the 160-token cases; 0.01 to 0.03 is typical.  That is below the
margin, so neither can flip, but with little room: a bfloat16 port with a looser precision
policy can flip a token, and this check then names it.  A larger margin does not fit
fine-grained routers: with 128 experts and top-8 (Qwen3-MoE) about 4% of tokens clear 0.1 at
both layers, none clear 0.25.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lmref.spec.captures import moe_layers
from lmref.spec.config import ModelConfig

ROUTING_MARGIN = 0.1


def routing_gaps(router_logits: np.ndarray, k: int) -> np.ndarray:
    """z [..., E] -> the gap between the k-th and (k+1)-th largest logit [...] (inf when k = E:
    every expert is chosen and nothing can flip)."""
    if k >= router_logits.shape[-1]:
        return np.full(router_logits.shape[:-1], np.inf)
    top = -np.sort(-router_logits, axis=-1)  # descending
    return top[..., k - 1] - top[..., k]


def smallest_gaps(config: ModelConfig, captured: dict) -> np.ndarray:
    """The smallest routing gap over the MoE layers, per token [...], from captured router
    logits (`layers.{i}.router` [..., E])."""
    k = config.moe.n_experts_per_token
    return np.min([routing_gaps(np.asarray(captured[f"layers.{i}.router"]), k) for i in moe_layers(config)], axis=0)


class RoutingResultError(ValueError):
    """A routing result that is not {layer: int array [B, S, k]} (a FAIL, like an invalid logits array)."""


def validate_routing(value: object, layers: list[str], shape: tuple[int, int, int], n_experts: int
                     ) -> dict[str, np.ndarray]:
    """{layer: int64 [B, S, k]} for the golden's MoE `layers`, or RoutingResultError saying what is wrong."""
    if not isinstance(value, Mapping):
        raise RoutingResultError(f"routing returned a {type(value).__name__}, expected a dict {{'layers.i': int array}}")
    missing = [name for name in layers if name not in value]
    if missing:
        raise RoutingResultError(f"routing returned no choice for MoE layer(s) {', '.join(missing)} "
                                 f"(keys returned: {', '.join(map(str, value)) or 'none'})")
    out = {}
    for name in layers:
        try:
            array = np.asarray(value[name])
        except Exception as e:  # a ragged list, an object that refuses conversion: the result's fault
            raise RoutingResultError(
                f"routing[{name!r}] is a {type(value[name]).__name__} that np.asarray cannot convert "
                f"({type(e).__name__}: {e}); return an int array [batch, seq, k]") from None
        if array.shape != shape:
            raise RoutingResultError(f"routing[{name!r}] has shape {array.shape}, expected {shape} = [batch, seq, k]")
        if not np.issubdtype(array.dtype, np.integer):
            raise RoutingResultError(f"routing[{name!r}] has dtype {array.dtype}, expected integer expert indices")
        if array.size and (array.min() < 0 or array.max() >= n_experts):
            raise RoutingResultError(f"routing[{name!r}] holds expert indices outside [0, {n_experts})")
        out[name] = array.astype(np.int64)
    return out


def first_flip(top: dict[str, np.ndarray], scores: dict[str, np.ndarray], got: dict[str, np.ndarray], k: int
               ) -> tuple[int, str] | None:
    """(number of (layer, token) pairs whose chosen set differs from the golden's, a description
    of the first), or None when every token of every layer chose the golden's experts.

    `top`: the golden's k + 1 best experts per token [B, S, k + 1], best first, and `scores`
    their router logits; the first k are the chosen ones."""
    flips, first = 0, None
    for name, ranked in top.items():
        same = np.sort(ranked[..., :k], axis=-1) == np.sort(got[name], axis=-1)  # [B, S, k]
        bad = np.argwhere(~same.all(axis=-1))  # [n, 2] of (batch, position)
        flips += len(bad)
        if first is None and len(bad):
            b, s = (int(i) for i in bad[0])
            first = _describe(name, b, s, ranked[b, s], scores[name][b, s], got[name][b, s], k)
    return (flips, first) if flips else None


def _describe(layer: str, b: int, s: int, ranked: np.ndarray, scores: np.ndarray, got: np.ndarray, k: int) -> str:
    """The first flipped token: the expert it lost and the one it took, with the golden's logits."""
    want = ranked[:k].tolist()
    golden = {int(e): float(z) for e, z in zip(ranked, scores)}
    lost = sorted(set(want) - set(got.tolist()))
    taken = sorted(set(got.tolist()) - set(want))
    parts = [f"expert {e} (golden logit {golden[e]:.6g}) not chosen" for e in lost]
    parts += [f"expert {e} ({f'golden logit {golden[e]:.6g}' if e in golden else 'below the golden top k+1'}) "
              "chosen instead" for e in taken]
    gap = scores[k - 1] - scores[k] if len(scores) > k else float("inf")
    return (f"{layer}, batch {b}, position {s}: golden experts {sorted(want)}, got {sorted(got.tolist())}: "
            f"{'; '.join(parts)}; the golden's k-th and (k+1)-th logits are {gap:.3g} apart "
            f"(every case keeps >= {ROUTING_MARGIN}), more than rounding moves them: the routing is wrong, "
            "or this layer's input already differs (the capture check names the first diverging component)")
