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
        if b.size == 0:
            continue  # no token chose e: nothing to add
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


def auxiliary_loss(config: ModelConfig, router_logits: list[np.ndarray]) -> float:
    """What a mixture adds to the training loss, from the router logits [B, S, E] of each "moe"
    layer: aux_loss_coef x `load_balancing_loss` + router_z_loss_coef x `router_z_loss`."""
    m = config.moe
    total = 0.0
    if m.aux_loss_coef > 0:
        total += m.aux_loss_coef * load_balancing_loss(config, router_logits)
    if m.router_z_loss_coef > 0:
        total += m.router_z_loss_coef * router_z_loss(config, router_logits)
    return total


def load_balancing_loss(config: ModelConfig, router_logits: list[np.ndarray]) -> float:
    """The auxiliary load-balancing loss of Switch Transformers (Fedus et al. 2022, eq. 4), of
    the kind `moe.aux_loss` names.  Per layer l, over its T = B x S rows:

        p = softmax(z) per row;  chosen = the top-k of p
        f_le = (rows of l that chose e) / T     (sums to k)
        P_le = mean over the rows of l of p_e

    "pooled", as transformers computes it for Mixtral, Qwen-MoE, OLMoE and DBRX
    (`load_balancing_loss_func`): f and P over the rows of all L layers together,

        aux = E * sum_e f_e P_e                          (k when the load is uniform)

    "per_layer", as MegaBlocks computes it for DBRX and OLMoE (`batched_load_balancing_loss`,
    databricks/megablocks and the `olmoe` branch of Muennighoff/megablocks, layers/moe.py:
    loss_weight * E / (L * T * k) * dot(tokens_per_expert, mean scores), both concatenated
    over the layers):

        aux = (1 / L) sum_l (E / k) sum_e f_le P_le      (1 when the load is uniform)"""
    m = config.moe
    E, k = m.n_experts, m.n_experts_per_token
    layers = [r.reshape(-1, E) for r in router_logits]  # [T, E] each
    if m.aux_loss == "pooled":
        layers = [np.concatenate(layers)]  # [L * T, E]: one pool of rows
    per_layer = []
    for z in layers:
        p = softmax(z)
        chosen = top_k(p, k)  # [rows, k]
        f = np.bincount(chosen.ravel(), minlength=E) / z.shape[0]  # [E]
        per_layer.append(E * np.sum(f * p.mean(axis=0)))
    scale = 1.0 if m.aux_loss == "pooled" else 1.0 / k
    return float(scale * np.mean(per_layer))


def router_z_loss(config: ModelConfig, router_logits: list[np.ndarray]) -> float:
    """The router z-loss (ST-MoE, Zoph et al. 2022, eq. 5) as OLMoE's authors compute it (the
    `olmoe` branch of Muennighoff/megablocks, layers/moe.py, `batched_load_balancing_loss`):
    the squared logsumexp of each row's logits, summed over the rows of all L layers and
    divided by L * T * k, the load-balancing loss's denominator, so k divides it too:

        z_loss = sum_{l, t} logsumexp(z_lt)^2 / (L * T * k)"""
    m = config.moe
    z = np.concatenate([r.reshape(-1, m.n_experts) for r in router_logits])  # [L * T, E]
    peak = z.max(axis=-1)
    lse = peak + np.log(np.exp(z - peak[:, None]).sum(axis=-1))  # [L * T]
    return float(np.sum(lse**2) / (z.shape[0] * m.n_experts_per_token))
