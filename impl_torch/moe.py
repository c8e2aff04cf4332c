"""Mixture-of-experts feed-forward layers and their load-balancing loss, torch twin of
impl_numpy/moe.py (the math is stated there and in spec/MATH.md, "MoE").

For each token x [d_model] of a "moe" layer:

    z = x @ router                                   router logits [E], in float32 at least
    softmax_topk: p = softmax(z); the k largest p chosen, w = those p (/ their sum when renormalize)
    sigmoid_topk: the k largest z chosen, w = sigmoid(z) of those (Llama 4)
    out = sum_j w_j * expert_{e_j}(x)  or, with router_scales_input,  sum_j expert_{e_j}(w_j * x)
    out += [sigmoid(x @ shared_gate)] * shared(x)    (shared expert, gated in Qwen2-MoE)

Sources: transformers 5.23 `MixtralSparseMoeBlock` (the per-expert loop of `dispatch="loop"`,
index_add_ combine), `Qwen2MoeSparseMoeBlock` (no renormalisation, the gated shared expert),
`Llama4TextMoe` (sigmoid of the top-k logits scaling the expert input) and
`load_balancing_loss_func` (the pooled auxiliary loss); MegaBlocks' `batched_load_balancing_loss`
(the per-layer one, and OLMoE's router z-loss).

Three dispatches compute the same math (tests/torch/test_moe.py holds them to the float64 row):

    "loop"    for each expert, the (token, slot) pairs that chose it (nonzero), its MLP on
              those tokens, index_add_ into the output: the plain reference;
    "sorted"  (default) the T * k assignments sorted by expert, one gather of their tokens,
              one matmul per expert over its contiguous run, one index_add_: no loop over tokens.
              The experts' weights are taken apart by one unbind per Parameter (its backward
              one stack), not w[e] per expert (each select_backward zero-fills a whole
              [E, d_in, d_out] gradient); measured on the CPU (benchmarks/bench_moe.py), padding
              the runs to [E, max count, d] for one bmm per projection, and a hand-written
              backward writing into preallocated gradients, were both slower;
    "dense"   static shapes for torch.export / ONNX: the weights scattered into a dense
              [T, E] matrix (0 where not chosen), every expert on every token, a weighted sum.
              Unchosen experts add 0 (weight 0, or input 0 with router_scales_input: the
              experts have no biases and every activation has act(0) = 0).

The routed experts are stacked Parameters in the canonical layout ([E, d_in, d_out], applied
as x @ W[e]), so one Parameter holds all E experts: every one of them is in the autograd graph
whenever any expert runs (an expert no token chose still runs on an empty slice), and DDP
needs no `find_unused_parameters`.

Precision (spec/MATH.md, "Precision policy"): the router logits are computed in float32 at
least, on upcast operands (Switch Transformers' "selective precision", Fedus et al. 2022,
section 2.4: the router's input is cast to float32; DeepSeek-V3's router in transformers,
`F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))`; in bfloat16 the
matmul's rounding alone could reorder near experts), and so are the softmax, sigmoid, top-k,
renormalisation, the shared expert's sigmoid gate and the auxiliary losses (float64 stays
float64); the weights are cast back to the activations' dtype for the combine (HF:
`routing_weights.to(hidden_states.dtype)`).  The captured router logits are therefore float32
at least, as the JAX twin's.

Ties: `torch.topk` does not say which of two equal scores wins (the golden picks the lower
index).  Only an exact tie at the k-th score is ambiguous; the golden cases keep the k-th and
(k+1)-th logits apart (conformance/routing.py), and the tests draw away from ties.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmref.impl_torch.mlp import ACTIVATIONS, MLP
from lmref.impl_torch.norms import upcast
from lmref.spec.config import ModelConfig

DISPATCHES = ("sorted", "loop", "dense")


class Experts(nn.Module):
    """E feed-forward blocks (impl_torch/mlp.py's math, no biases) stacked on a leading axis:
    w_gate, w_up [E, d_model, f], w_down [E, f, d_model], as the canonical params."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None):
        super().__init__()
        e, d, f = config.moe.n_experts, config.d_model, config.expert_d_ff
        kw = dict(dtype=dtype, device=device)
        self.act = ACTIVATIONS[config.activation]
        self.w_gate = nn.Parameter(torch.empty(e, d, f, **kw)) if config.mlp == "gated" else None
        self.w_up = nn.Parameter(torch.empty(e, d, f, **kw))
        self.w_down = nn.Parameter(torch.empty(e, f, d, **kw))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default: uniform in +-1/sqrt(d_in), each expert on its own d_in."""
        for w in (self.w_gate, self.w_up, self.w_down):
            if w is not None:
                bound = 1.0 / math.sqrt(w.shape[-2])
                nn.init.uniform_(w, -bound, bound)

    def one(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on x [n, d_model] -> [n, d_model] (n may be 0)."""
        return self.mlp(x, None if self.w_gate is None else self.w_gate[e], self.w_up[e], self.w_down[e])

    def mlp(self, x: torch.Tensor, w_gate: torch.Tensor | None, w_up: torch.Tensor,
            w_down: torch.Tensor) -> torch.Tensor:
        """One expert's weights (w_gate, w_up [d_model, f], w_down [f, d_model]) on x [n, d_model]."""
        up = x @ w_up  # [n, d] @ [d, f] -> [n, f]
        hidden = self.act(up) if w_gate is None else self.act(x @ w_gate) * up
        return hidden @ w_down  # [n, f] @ [f, d] -> [n, d]

    def each(self) -> list[tuple]:
        """[(w_gate, w_up, w_down) of expert e] for every e, by one unbind per Parameter: its
        backward stacks the E gradients once, where indexing w[e] E times would zero-fill a
        whole [E, d_in, d_out] gradient per expert (select_backward) and sum them."""
        n = self.w_up.shape[0]
        gates = [None] * n if self.w_gate is None else self.w_gate.unbind(0)  # E x [d, f]
        return list(zip(gates, self.w_up.unbind(0), self.w_down.unbind(0)))  # E x ([d, f], [d, f], [f, d])

    def every(self, x: torch.Tensor) -> torch.Tensor:
        """Expert e on row e of x [E, T, d_model] -> [E, T, d_model]."""
        up = torch.bmm(x, self.w_up)  # [E, T, d] @ [E, d, f] -> [E, T, f]
        hidden = self.act(up) if self.w_gate is None else self.act(torch.bmm(x, self.w_gate)) * up
        return torch.bmm(hidden, self.w_down)  # [E, T, f] @ [E, f, d] -> [E, T, d]


def dispatch_loop(experts: Experts, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
                  scales_input: bool) -> torch.Tensor:
    """x [T, d], chosen [T, k] expert ids, weights [T, k] (x's dtype) -> [T, d]: for each
    expert, the tokens that chose it (HF `MixtralSparseMoeBlock`'s loop)."""
    out = torch.zeros_like(x)
    for e in range(experts.w_up.shape[0]):
        token, slot = torch.nonzero(chosen == e, as_tuple=True)  # [n] each: the pairs that chose e
        w = weights[token, slot, None]  # [n, 1]
        y = experts.one(e, w * x[token]) if scales_input else w * experts.one(e, x[token])  # [n, d]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def dispatch_sorted(experts: Experts, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
                    scales_input: bool) -> torch.Tensor:
    """As `dispatch_loop`, with the T * k assignments sorted by expert: one gather, one matmul
    per expert (on its `Experts.each` weights) over its contiguous run of assignments, one
    index_add_."""
    k, n_experts = chosen.shape[1], experts.w_up.shape[0]
    flat = chosen.reshape(-1)  # [T * k] the expert of each (token, slot), token-major
    order = torch.argsort(flat, stable=True)  # [T * k] the assignments grouped by expert
    token = order // k  # [T * k] the token of each sorted assignment
    w = weights.reshape(-1)[order, None]  # [T * k, 1]
    xs = x.index_select(0, token)  # [T * k, d] one gather (its backward an index_add_)
    if scales_input:
        xs = w * xs
    counts = torch.bincount(flat, minlength=n_experts).tolist()  # assignments per expert (a host sync)
    ys = torch.cat([experts.mlp(run, *ew) for ew, run in zip(experts.each(), xs.split(counts))])  # [T * k, d]
    if not scales_input:
        ys = w * ys
    return torch.zeros_like(x).index_add_(0, token, ys.to(x.dtype))


def dispatch_dense(experts: Experts, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
                   scales_input: bool) -> torch.Tensor:
    """As `dispatch_loop` with static shapes: every expert on every token, weighted by a dense
    [T, E] matrix that is 0 where an expert was not chosen."""
    n_experts = experts.w_up.shape[0]
    gates = weights.new_zeros(x.shape[0], n_experts).scatter(1, chosen, weights)  # [T, E]
    gates = gates.T[:, :, None]  # [E, T, 1]
    if scales_input:
        return experts.every(gates * x).to(x.dtype).sum(0)  # [E, T, 1] * [T, d] -> [E, T, d] -> [T, d]
    ys = experts.every(x.expand(n_experts, *x.shape))  # [E, T, d]
    return (gates * ys.to(x.dtype)).sum(0)  # [E, T, d] -> [T, d]


_DISPATCH = {"sorted": dispatch_sorted, "loop": dispatch_loop, "dense": dispatch_dense}


def check_dispatch(dispatch: str) -> str:
    if dispatch not in DISPATCHES:
        raise ValueError(f"moe_dispatch must be one of {list(DISPATCHES)}, got {dispatch!r}")
    return dispatch


class MoE(nn.Module):
    """One "moe" layer: x [B, S, d_model] -> (out [B, S, d_model], router logits [B, S, E]).

    Module names follow the canonical params (spec/params.py): `router` and `shared_gate` are
    nn.Linear (weights transposed, as every projection), `experts.w_*` the stacked Parameters,
    `shared` an MLP of width `config.shared_expert_d_ff`."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device=None, dispatch: str = "sorted"):
        super().__init__()
        m, d = config.moe, config.d_model
        kw = dict(bias=False, dtype=dtype, device=device)
        self.moe, self.dispatch = m, check_dispatch(dispatch)
        self.router = nn.Linear(d, m.n_experts, **kw)
        self.experts = Experts(config, dtype, device)
        self.shared = MLP(config, dtype, device, d_ff=config.shared_expert_d_ff) if m.n_shared_experts else None
        self.shared_gate = nn.Linear(d, 1, **kw) if m.shared_expert_gate else None

    def route(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router logits z [..., E] -> (chosen experts [..., k] int64, their weights [..., k]
        in float32 at least)."""
        m = self.moe
        z = upcast(z)
        if m.router == "softmax_topk":  # softmax over all E, then top-k (HF `MixtralTopKRouter`)
            weights, chosen = torch.topk(torch.softmax(z, dim=-1), m.n_experts_per_token, dim=-1)
        else:  # sigmoid_topk: top-k of the raw logits, sigmoid of the chosen (HF `Llama4Router`)
            top, chosen = torch.topk(z, m.n_experts_per_token, dim=-1)
            weights = torch.sigmoid(top)
        if m.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return chosen, weights

    def logits(self, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """x [B, S, d] through a bias-free `linear` (the router, the shared gate) in float32 at
        least: [B, S, d_out]."""
        return F.linear(upcast(x), upcast(linear.weight))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.logits(self.router, x)  # [B, S, d] @ [d, E] -> [B, S, E], float32 at least
        chosen, weights = self.route(z)  # [B, S, k] each
        flat = x.reshape(-1, x.shape[-1])  # [B * S, d]
        routed = _DISPATCH[self.dispatch](self.experts, flat, chosen.reshape(-1, chosen.shape[-1]),
                                          weights.reshape(-1, weights.shape[-1]).to(x.dtype),
                                          self.moe.router_scales_input)  # [B * S, d]
        out = routed.reshape(x.shape)  # [B, S, d]
        if self.shared is not None:
            shared = self.shared(x)  # [B, S, d]
            if self.shared_gate is not None:  # Qwen2-MoE: one sigmoid scalar per token
                gate = torch.sigmoid(self.logits(self.shared_gate, x))  # [B, S, 1], float32 at least
                shared = (gate * shared).to(x.dtype)  # [B, S, 1] * [B, S, d]
            out = out + shared
        return out, z


def load_balancing_loss(config: ModelConfig, router_logits: list[torch.Tensor]) -> torch.Tensor:
    """impl_numpy.moe.load_balancing_loss as a 0-d tensor in float32 at least: per layer,
    f_le the fraction of its rows whose top k holds e (sums to k) and P_le the mean softmax
    probability of e;

        "pooled" (transformers' load_balancing_loss_func): E sum_e f_e P_e over the rows of
                   every "moe" layer together
        "per_layer" (MegaBlocks): the mean over layers of (E / k) sum_e f_le P_le

    The gradient flows through P only."""
    m = config.moe
    E, k = m.n_experts, m.n_experts_per_token
    layers = [upcast(r).reshape(-1, E) for r in router_logits]  # [T, E] each
    if m.aux_loss == "pooled":
        layers = [torch.cat(layers)]  # [L * T, E]
    balance = []
    for z in layers:
        p = torch.softmax(z, dim=-1)  # [rows, E]
        chosen = torch.topk(p, k, dim=-1).indices  # [rows, k]
        f = torch.bincount(chosen.flatten(), minlength=E).to(p.dtype) / z.shape[0]  # [E]
        balance.append(E * (f * p.mean(dim=0)).sum())
    scale = 1.0 if m.aux_loss == "pooled" else 1.0 / k
    return scale * torch.stack(balance).mean()


def router_z_loss(config: ModelConfig, router_logits: list[torch.Tensor]) -> torch.Tensor:
    """impl_numpy.moe.router_z_loss (OLMoE's): sum over the rows of every layer of
    logsumexp(z)^2, divided by L * T * k; a 0-d tensor in float32 at least."""
    m = config.moe
    z = torch.cat([upcast(r).reshape(-1, m.n_experts) for r in router_logits])  # [L * T, E]
    return torch.logsumexp(z, dim=-1).square().sum() / (z.shape[0] * m.n_experts_per_token)


@torch.no_grad()
def expert_load(config: ModelConfig, router_logits: list[torch.Tensor]) -> torch.Tensor:
    """[n_moe_layers, E]: per layer, the fraction of its (token, slot) assignments that went
    to each expert (each row sums to 1; 1 / E everywhere when perfectly balanced)."""
    m = config.moe
    rows = []
    for z in router_logits:  # [B, S, E]; both router kinds choose the top k of z
        chosen = torch.topk(z, m.n_experts_per_token, dim=-1).indices.flatten()  # [B * S * k]
        rows.append(torch.bincount(chosen, minlength=m.n_experts).float() / chosen.numel())
    return torch.stack(rows)
