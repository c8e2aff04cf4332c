"""Mixture-of-experts feed-forward layers and their load-balancing loss (JAX twin of
impl_numpy/moe.py).

One "moe" layer, for each token x [d_model] (the golden's docstring states the math):

    z = x @ router                                   router logits [E]
    softmax_topk (Mixtral, DBRX, Qwen-MoE, OLMoE):   p = softmax(z); the k largest p are chosen;
        w = those p, divided by their sum when `renormalize`
    sigmoid_topk (Llama 4):                          the k largest z are chosen; w = sigmoid(z)
    out = sum_j w_j * expert_{e_j}(x)                (w scales the output: Mixtral)
    out = sum_j expert_{e_j}(w_j * x)                (router_scales_input: Llama 4)
    out += [sigmoid(x @ shared_gate)] * shared(x)    (shared expert, gated in Qwen2-MoE)

Sources: transformers `MixtralTopKRouter`, `Qwen2MoeSparseMoeBlock`, `DbrxRouter`,
`Llama4TextMoe` (../shared/reference/hf_measured.md).

Static shapes, no dispatch: the k weights are scattered into a dense [B, S, E] matrix (0 for
the experts a token did not choose) and every expert runs on every token, an einsum over the
stacked expert weights [E, d, f].  An unchosen expert then adds 0 * expert(x) to the output,
or, with router_scales_input, sees the input 0 * x and returns expert(0) = 0 (the experts
have no biases, spec/validation.py, and act(0) = 0 for every activation).  This costs E/k
times the FLOPs of a dispatching kernel and is exact, jit- and grad-friendly.

Selection: `jax.lax.top_k` on the router logits.  softmax is increasing, so the k largest
logits are the k largest probabilities (the golden ranks the probabilities), and ranking the
logits avoids ties that rounding in exp could create.  top_k breaks an exact tie towards the
lower index, as the golden does; the golden cases keep every k-th / (k+1)-th gap away from
ties (conformance/cases.py, ROUTING_MARGIN), so no implementation is judged on one.

Precision: the router logits, softmax, sigmoid, top-k and the weights are computed in at least
float32 whatever the params dtype (the router matmul too, on upcast operands: in bfloat16 its
rounding alone could reorder near experts); the dense weights are then cast to the activation
dtype for the combine, as transformers casts `routing_weights` back to the hidden dtype.  The
captured router logits are therefore at least float32.  The shared expert's sigmoid gate is
likewise computed in at least float32 and cast back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lmref.impl_jax.mlp import ACTIVATIONS, mlp
from lmref.impl_jax.norms import upcast
from lmref.spec.config import ModelConfig


def router_logits(params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """x [B, S, d_model] -> router logits z [B, S, E], in at least float32."""
    return upcast(x) @ upcast(params[f"{prefix}.router"])  # [B, S, d] @ [d, E] -> [B, S, E]


def route(config: ModelConfig, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Router logits z [B, S, E] -> (chosen experts [B, S, k], their weights [B, S, k])."""
    m = config.moe
    _, experts = jax.lax.top_k(z, m.n_experts_per_token)  # [B, S, k], largest first, ties -> lower index
    if m.router == "softmax_topk":
        probs = jax.nn.softmax(z, axis=-1)  # [B, S, E], over all E experts (Mixtral)
        weights = jnp.take_along_axis(probs, experts, axis=-1)  # [B, S, k]
    else:  # sigmoid_topk (Llama 4): sigmoid of the chosen logits
        weights = jax.nn.sigmoid(jnp.take_along_axis(z, experts, axis=-1))  # [B, S, k]
    if m.renormalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)  # [B, S, k] / [B, S, 1]
    return experts, weights


def dense_weights(config: ModelConfig, experts: jax.Array, weights: jax.Array) -> jax.Array:
    """(experts [B, S, k], weights [B, S, k]) -> [B, S, E]: each token's weight per expert,
    0 for the experts it did not choose (the k chosen are distinct, so nothing adds up)."""
    one_hot = jax.nn.one_hot(experts, config.moe.n_experts, dtype=weights.dtype)  # [B, S, k, E]
    return jnp.einsum("bsk,bske->bse", weights, one_hot)  # [B, S, E]


def experts_ffn(config: ModelConfig, params: dict, prefix: str, x: jax.Array, per_expert_input: bool) -> jax.Array:
    """Every expert of the stack at `prefix` on every token: [B, S, E, d_model].

    x is [B, S, d_model] (one input for all experts) or, with `per_expert_input`,
    [B, S, E, d_model] (expert e reads x[:, :, e]).  Each expert is the model's MLP without
    biases (impl_jax/mlp.py): down(act(x W_gate) * (x W_up)) or down(act(x W_up))."""
    act = ACTIVATIONS[config.activation]
    spec = "bsed,edf->bsef" if per_expert_input else "bsd,edf->bsef"  # W: [E, d_model, f]
    up = jnp.einsum(spec, x, params[f"{prefix}.w_up"])  # [B, S, E, f]
    hidden = act(jnp.einsum(spec, x, params[f"{prefix}.w_gate"])) * up if config.mlp == "gated" else act(up)
    return jnp.einsum("bsef,efd->bsed", hidden, params[f"{prefix}.w_down"])  # [B, S, E, f] @ [E, f, d] -> [B, S, E, d]


def shared_expert(config: ModelConfig, params: dict, prefix: str, x: jax.Array) -> jax.Array:
    """The shared expert on x [B, S, d_model] -> [B, S, d_model], scaled by its sigmoid gate
    sigmoid(x @ shared_gate) (one scalar per token, Qwen2-MoE) when the config has one."""
    out = mlp(config, params, f"{prefix}.shared", x)  # [B, S, d_model]
    if config.moe.shared_expert_gate:
        gate = jax.nn.sigmoid(upcast(x) @ upcast(params[f"{prefix}.shared_gate"]))  # [B, S, d] @ [d, 1] -> [B, S, 1]
        out = (gate * out).astype(out.dtype)  # [B, S, 1] * [B, S, d]
    return out


def moe(config: ModelConfig, params: dict, prefix: str, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One "moe" layer: x [B, S, d_model] -> (output [B, S, d_model], router logits [B, S, E])."""
    m = config.moe
    z = router_logits(params, prefix, x)  # [B, S, E]
    w = dense_weights(config, *route(config, z)).astype(x.dtype)  # [B, S, E]
    if m.router_scales_input:  # Llama 4: expert e sees w_e * x, 0 when unchosen
        scaled = w[..., None] * x[:, :, None, :]  # [B, S, E, 1] * [B, S, 1, d] -> [B, S, E, d]
        out = experts_ffn(config, params, f"{prefix}.experts", scaled, True).sum(axis=2)  # [B, S, d]
    else:  # Mixtral: sum_e w_e * expert_e(x)
        out = jnp.einsum("bse,bsed->bsd", w, experts_ffn(config, params, f"{prefix}.experts", x, False))
    if m.n_shared_experts:
        out = out + shared_expert(config, params, prefix, x)
    return out, z


def load_balancing_loss(config: ModelConfig, router_logits: list[jax.Array]) -> jax.Array:
    """The Switch Transformers load-balancing loss (Fedus et al. 2022, eq. 4) of the kind
    `moe.aux_loss` names, in at least float32.  Per layer l over its rows: p = softmax(z);
    f_le = the fraction of rows whose top k holds e (sums to k); P_le = the mean of p_e.

        "pooled" (transformers' `load_balancing_loss_func`): E * sum_e f_e P_e over the rows
                 of every "moe" layer together
        "per_layer" (MegaBlocks' `batched_load_balancing_loss`): mean_l (E / k) sum_e f_le P_le

    f is a count, so the gradient flows through P only (as in both)."""
    m = config.moe
    E, k = m.n_experts, m.n_experts_per_token
    layers = [upcast(r).reshape(-1, E) for r in router_logits]  # [T, E] each
    if m.aux_loss == "pooled":
        layers = [jnp.concatenate(layers)]  # [L * T, E]
    balance = []
    for z in layers:
        p = jax.nn.softmax(z, axis=-1)  # [rows, E]
        _, chosen = jax.lax.top_k(z, k)  # [rows, k]: the top-k of p, as in `route`
        f = jax.nn.one_hot(chosen, E, dtype=p.dtype).sum(axis=1).mean(axis=0)  # [rows, k, E] -> [E]
        balance.append(E * jnp.sum(f * p.mean(axis=0)))  # [E] . [E]
    scale = 1.0 if m.aux_loss == "pooled" else 1.0 / k
    return scale * jnp.mean(jnp.stack(balance))


def router_z_loss(config: ModelConfig, router_logits: list[jax.Array]) -> jax.Array:
    """OLMoE's router z-loss (the `olmoe` branch of Muennighoff/megablocks): logsumexp(z)^2
    summed over the rows of every "moe" layer, divided by L * T * k; at least float32."""
    m = config.moe
    z = jnp.concatenate([upcast(r).reshape(-1, m.n_experts) for r in router_logits])  # [L * T, E]
    return jnp.sum(jax.nn.logsumexp(z, axis=-1) ** 2) / (z.shape[0] * m.n_experts_per_token)
