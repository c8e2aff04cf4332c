"""The precision policy (spec/MATH.md, "Precision policy") checked structurally in the torch twin.

A missing upcast hardly moves the logits of a tiny random model: the damage stays inside the
half-precision tolerance rows, which are scaled to the error of rounding the weights (issue
17: the eager attention bias built in bfloat16 passed every output check).  So these tests
run tiny bfloat16 and float16 models under a TorchFunctionMode that records every torch call
(its function, arguments and result) and assert that each intermediate the policy names is
float32 or wider:

- score-shaped tensors (two dims of size SEQ, a size no tiny preset has): the q.k products,
  the softcap, the ALiBi bias, the mask's fill and the softmax.  Every call but a cast reads
  and writes them wide, except the value product (it reads the probabilities cast to the
  value dtype) and SDPA, which takes its mask in the query's dtype (torch's documentation of
  `scaled_dot_product_attention`: "a float mask of the same type as query, key, value"; the
  mask is built wide and rounded once, impl_torch/attention.py `attention_bias`);
- every softmax, log-softmax, logsumexp, cross entropy, top-k and sigmoid (the MLPs'
  activations are F.silu / F.gelu, never torch.sigmoid);
- the input of every norm (F.layer_norm, F.rms_norm) and the RoPE cos / sin;
- the router logits, the final logit softcap and every part of the loss.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from lmref.impl_torch import Transformer
from lmref.spec import init_params, tiny

SEQ = 11  # no size of the presets below is 11: a tensor with two dims of 11 is a score matrix
HALF = (torch.bfloat16, torch.float16)
KERNELS = ("sdpa", "eager")
ARCHS = ["mpt", "gemma2-9b", "mistral-7b", "gemma3-4b", "gptj-6b", "palm-8b", "mixtral-8x7b",
         "llama4-scout", "qwen1.5-moe-a2.7b", "olmoe-1b-7b"]
MOE_ARCHS = [a for a in ARCHS if tiny(a).moe is not None]
CASTS = {"to", "float", "double", "half", "bfloat16", "type", "type_as"}
MATMUL = {"matmul", "__matmul__"}  # impl_torch/attention.py's eager kernel: q @ k^T, then probs @ v
SDPA = "scaled_dot_product_attention"


@dataclass
class Call:
    name: str
    args: tuple
    kwargs: dict
    out: object

    def tensors(self, outputs: bool = True) -> list[torch.Tensor]:
        found = tree_leaves((self.args, self.kwargs, self.out if outputs else None))
        return [t for t in found if isinstance(t, torch.Tensor)]


class Recorder(TorchFunctionMode):
    """Every torch function, method and operator called inside it, with its result."""

    def __init__(self):
        super().__init__()
        self.calls: list[Call] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append(Call(getattr(func, "__name__", repr(func)), args, kwargs, out))
        return out

    def named(self, *names: str) -> list[Call]:
        return [c for c in self.calls if c.name in names]


def is_wide(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float64)


def is_half(t: torch.Tensor) -> bool:
    return t.is_floating_point() and not is_wide(t)


def score_shaped(t: torch.Tensor) -> bool:
    return list(t.shape).count(SEQ) >= 2


def is_score_product(c: Call) -> bool:
    """q @ k^T: a matmul whose result is the [B, H, Sq, Sk] scores."""
    return c.name in MATMUL and score_shaped(c.out)


def is_value_product(c: Call) -> bool:
    """probs @ v: a matmul of the scores' shape into [B, H, Sq, hd], in v's dtype by design."""
    return c.name in MATMUL and score_shaped(first_arg(c)) and not score_shaped(c.out)


@dataclass
class Run:
    config: object
    forward: Recorder
    routers: list[torch.Tensor]
    loss: Recorder
    parts: dict


@functools.lru_cache(maxsize=None)
def recorded(arch: str, dtype: torch.dtype, attn_impl: str) -> Run:
    """A forward (with its router logits) and a loss of the tiny preset in `dtype`, recorded."""
    config = tiny(arch)
    model = Transformer.from_canonical(config, init_params(config, 0), dtype=dtype, attn_impl=attn_impl)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, config.vocab_size, size=(2, SEQ)))
    with torch.no_grad():
        with Recorder() as forward:
            _, routers = model(tokens, output_router_logits=True)
        with Recorder() as loss:
            parts = model.loss_parts(tokens)
    return Run(config, forward, routers, loss, parts)


def first_arg(call: Call) -> torch.Tensor:
    return call.args[0] if call.args else next(iter(call.kwargs.values()))


@pytest.mark.parametrize("attn_impl", KERNELS)
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_scores_bias_mask_and_softmax_are_wide(arch, dtype, attn_impl):
    run = recorded(arch, dtype, attn_impl)
    kernels = [c for c in run.forward.calls if is_score_product(c)] + run.forward.named(SDPA)
    assert len(kernels) == run.config.n_layers, "one attention kernel per layer, else the check reads nothing"
    bad = []
    for c in run.forward.calls:
        if c.name in CASTS or c.name == SDPA or is_value_product(c):
            continue
        bad += [c.name for t in c.tensors() if score_shaped(t) and is_half(t)][:1]
    assert not bad, f"{arch} {dtype} {attn_impl}: score-shaped half-precision tensors in {bad}"
    for c in run.forward.named(SDPA):
        mask = c.kwargs.get("attn_mask")
        assert mask is None or mask.dtype == first_arg(c).dtype, f"SDPA mask in {mask.dtype}, query in {dtype}"
    softmax = run.forward.named("softmax", "log_softmax")
    assert all(is_wide(first_arg(c)) for c in softmax), f"{arch} {dtype}: a softmax in half precision"


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_norm_inputs_and_rope_angles_are_wide(arch, dtype):
    run = recorded(arch, dtype, "sdpa")
    norms = run.forward.named("layer_norm", "rms_norm")
    assert len(norms) >= run.config.n_layers + 1, f"{arch}: {len(norms)} norms found"
    assert all(is_wide(first_arg(c)) for c in norms), f"{arch} {dtype}: a norm's statistics in half precision"
    angles = run.forward.named("cos", "sin")
    assert len(angles) >= 2 * (run.config.position == "rope"), f"{arch}: no RoPE cos / sin found"
    assert all(is_wide(c.out) for c in angles), f"{arch} {dtype}: RoPE cos / sin in half precision"


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_router_logits_and_routing_are_wide(arch, dtype):
    run = recorded(arch, dtype, "sdpa")
    assert run.routers and all(is_wide(z) for z in run.routers), f"{arch} {dtype}: router logits in half precision"
    routing = run.forward.named("topk", "sigmoid", "softmax")
    assert routing and all(is_wide(first_arg(c)) for c in routing), f"{arch} {dtype}: routing in half precision"


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("arch", ["gemma2-9b", "palm-8b", "olmoe-1b-7b", "mixtral-8x7b", "mpt"])
def test_loss_and_final_softcap_are_wide(arch, dtype):
    run = recorded(arch, dtype, "eager")
    narrow = {k: v.dtype for k, v in run.parts.items() if not is_wide(v)}
    assert not narrow, f"{arch} {dtype}: loss parts in half precision: {narrow}"
    losses = run.loss.named("cross_entropy", "logsumexp", "softmax", "log_softmax", "topk")
    assert losses and all(is_wide(first_arg(c)) for c in losses), f"{arch} {dtype}: a loss term in half precision"
    caps = [c for c in run.forward.named("tanh") if first_arg(c).shape[-1] == run.config.vocab_size]
    assert len(caps) == (run.config.final_logit_softcap is not None), f"{arch}: final softcap not found"
    assert all(is_wide(first_arg(c)) for c in caps), f"{arch} {dtype}: final softcap in half precision"
