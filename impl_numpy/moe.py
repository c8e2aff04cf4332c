"""Mixture-of-experts feed-forward layers and their load-balancing loss (float64 golden).

One "moe" layer (spec/MATH.md, "MoE"), for each token x [d_model]:

    z = x @ router                                   router logits [E]
    softmax_topk (Mixtral, DBRX, Qwen-MoE, OLMoE):   p = softmax(z) over all E experts;
        the k largest p are chosen; w = those p, divided by their sum when `renormalize`
    sigmoid_topk (Llama 4):                          the k largest z are chosen; w = sigmoid(z)
    out = sum_j w_j * expert_{e_j}(x)                (Mixtral: w scales the output)
    out = sum_j expert_{e_j}(w_j * x)                (Llama 4, router_scales_input)
    out += [sigmoid(x @ shared_gate)] * shared(x)    (shared expert, gated in Qwen2-MoE)

Every expert is the model's MLP (impl_numpy/mlp.py, without biases) at its own weights.  The
routing is dropless: every token gets exactly k experts (no capacity, no jitter at inference).
Sources: transformers 5.23 `MixtralTopKRouter`, `Qwen2MoeSparseMoeBlock`, `DbrxRouter` (its
L1 normalisation of the top-k weights is the renormalisation), `Llama4TextMoe`; Meta's
llama-models and mistral-inference agree (../shared/reference/hf_measured.md).

Ties at the k-th score are broken towards the lower expert index; the golden cases are built
so that none is within `ROUTING_MARGIN` (conformance/cases.py), so no implementation is ever
judged on a tie.
"""

from __future__ import annotations

import numpy as np

from lmref.impl_numpy.mlp import mlp
from lmref.spec.config import ModelConfig


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # finite for any z


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices [..., k] of the k largest scores, largest first; a tie goes to the lower
    index (a stable sort of -score)."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def route(config: ModelConfig, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Router logits z [B, S, E] -> (chosen experts [B, S, k], their weights [B, S, k])."""
    m = config.moe
    if m.router == "softmax_topk":
        probs = softmax(z)  # over all E experts, then top-k (Mixtral; equal to top-k then softmax only when renormalised)
        experts = top_k(probs, m.n_experts_per_token)
        weights = np.take_along_axis(probs, experts, axis=-1)
    else:  # sigmoid_topk: top-k of the raw logits, sigmoid of the chosen ones (Llama 4)
        experts = top_k(z, m.n_experts_per_token)
        weights = sigmoid(np.take_along_axis(z, experts, axis=-1))
    if m.renormalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return experts, weights


def _ffn(config: ModelConfig, params: dict, prefix: str, x: np.ndarray, expert: int | None = None) -> np.ndarray:
    """The MLP at `prefix` (expert `expert` of a stacked set) on x [..., d_model]."""
    names = ("w_gate", "w_up", "w_down") if config.mlp == "gated" else ("w_up", "w_down")
    weights = {f"e.{n}": params[f"{prefix}.{n}"] if expert is None else params[f"{prefix}.{n}"][expert]
               for n in names}
    return mlp(config, weights, "e", x)


def moe(config: ModelConfig, params: dict, prefix: str, x: np.ndarray,
        capture: dict | None = None, name: str = "") -> np.ndarray:
    """One "moe" layer: x [B, S, d_model] -> [B, S, d_model].  The router logits go to
    capture[name + ".router"] when capturing."""
    m = config.moe
    z = x @ params[f"{prefix}.router"]  # [B, S, d_model] @ [d_model, E] -> [B, S, E]
    if capture is not None:
        capture[f"{name}.router"] = z
    experts, weights = route(config, z)  # [B, S, k] each
    out = np.zeros_like(x)
    for e in range(m.n_experts):  # dispatch: the tokens that chose expert e, then combine
        b, s, j = np.nonzero(experts == e)  # one (token, slot) per token that chose e
        w = weights[b, s, j][:, None]  # [n, 1]
        if m.router_scales_input:  # Llama 4: the weight scales what the expert sees
            out[b, s] += _ffn(config, params, f"{prefix}.experts", w * x[b, s], e)
        else:
            out[b, s] += w * _ffn(config, params, f"{prefix}.experts", x[b, s], e)
    if m.n_shared_experts:
        shared = _ffn(config, params, f"{prefix}.shared", x)
        if m.shared_expert_gate:  # Qwen2-MoE: sigmoid(x @ w_g), one scalar per token
            shared = sigmoid(x @ params[f"{prefix}.shared_gate"]) * shared  # [B, S, 1] * [B, S, d]
        out = out + shared
    return out


def load_balancing_loss(config: ModelConfig, router_logits: list[np.ndarray]) -> float:
    """The auxiliary load-balancing loss of Switch Transformers (Fedus et al. 2022, eq. 4) as
    transformers computes it for Mixtral, Qwen-MoE and OLMoE (`load_balancing_loss_func`):
    over the tokens of every "moe" layer together (T = layers x B x S rows),

        p = softmax(z) per row;  chosen = the top-k of p
        f_e = (rows that chose e) / T     (sums to k)
        P_e = mean over rows of p_e
        aux = E * sum_e f_e P_e

    1 * k when the load is uniform; `loss` adds aux_loss_coef * aux to the cross-entropy."""
    m = config.moe
    z = np.concatenate([r.reshape(-1, m.n_experts) for r in router_logits])  # [T, E]
    p = softmax(z)
    chosen = top_k(p, m.n_experts_per_token)  # [T, k]
    f = np.bincount(chosen.ravel(), minlength=m.n_experts) / z.shape[0]  # [E]
    return float(m.n_experts * np.sum(f * p.mean(axis=0)))
