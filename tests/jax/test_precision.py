"""The precision policy (spec/MATH.md, "Precision policy") checked structurally in the JAX twin.

A missing upcast hardly moves the logits of a tiny random model: the damage stays inside the
bfloat16 tolerance row, which is scaled to the error of rounding the weights (issue 17: JAX
scores, ALiBi bias and softmax in bfloat16 passed every output check).  So these tests read
the dtypes themselves, from the jaxpr of a half-precision forward and loss (`jax.make_jaxpr`
on abstract params: nothing is compiled or run), and assert that each intermediate the policy
names is float32 or wider:

- score-shaped arrays (two dims of size SEQ, a size no tiny preset has): the q.k
  products, the softcap, the ALiBi bias, the masked fill and the softmax.  Every equation but
  a cast reads and writes them wide; the value product (a dot_general) may read the
  probabilities cast to the value dtype;
- every `exp` (each softmax and logsumexp: attention, routing, loss, z-losses) and `log`;
- every `rsqrt` (the statistics of every norm: block, final, QK, embedding);
- the RoPE tables (host constants gathered at the positions) and the rotation, up to the
  cast back to the activation dtype;
- the router logits (captured), every `top_k` input, every sigmoid but the MLP activations',
  the final logit softcap's `tanh`, and the loss.
"""

from __future__ import annotations

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import pytest

from lmref.impl_jax.model import forward_core, loss_core
from lmref.spec import tiny
from lmref.spec.captures import moe_layers
from lmref.spec.params import param_shapes

SEQ = 11  # no size of the presets below is 11: an array with two dims of 11 is a score matrix
HALF = ("bfloat16", "float16")
ARCHS = ["mpt", "gemma2-9b", "mistral-7b", "gemma3-4b", "gptj-6b", "palm-8b", "mixtral-8x7b",
         "llama4-scout", "qwen1.5-moe-a2.7b", "olmoe-1b-7b"]
MOE_ARCHS = [a for a in ARCHS if tiny(a).moe is not None]
# equations that carry a RoPE table's values on unchanged (a layout, a cast, LongRoPE's choice)
CARRIES_TABLE = {"broadcast_in_dim", "reshape", "squeeze", "expand_dims", "transpose", "convert_element_type",
                 "select_n"}


def is_wide(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits >= 32


def is_half(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.floating) and not is_wide(aval.dtype)


def sub_jaxprs(eqn):
    """The jaxprs inside an equation's params (a jit's body, a custom_jvp's, cond branches)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def equations(jaxpr):
    """Every leaf equation of `jaxpr` and of the jaxprs nested in it, in order."""
    for eqn in jaxpr.eqns:
        inner = list(sub_jaxprs(eqn))
        if not inner:
            yield eqn
        for sub in inner:
            yield from equations(sub)


@functools.lru_cache(maxsize=None)
def traced(arch: str, dtype: str, what: str):
    """(config, closed jaxpr, output shapes) of `what` ("forward" with captures, or "loss")
    for the tiny preset in `dtype`, on abstract params and tokens [2, SEQ]."""
    config = tiny(arch)
    params = {k: jax.ShapeDtypeStruct(s, jnp.dtype(dtype)) for k, s in param_shapes(config).items()}
    tokens = jax.ShapeDtypeStruct((2, SEQ), jnp.int32)
    fn = functools.partial(forward_core, config, capture=True) if what == "forward" else \
        functools.partial(loss_core, config)
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(params, tokens)
    return config, closed, shapes


def narrow(eqns, primitive: str) -> tuple[int, list[str]]:
    """(how many equations of `primitive`, those among them with a half-precision output)."""
    found = [e for e in eqns if e.primitive.name == primitive]
    return len(found), [str(e) for e in found if any(is_half(v.aval) for v in e.outvars)]


def score_shaped(aval) -> bool:
    """Two dims of SEQ: a score matrix, in whatever layout a dot_general leaves it."""
    return list(getattr(aval, "shape", ())).count(SEQ) >= 2


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("arch", ARCHS)
def test_scores_bias_mask_and_softmax_are_wide(arch, dtype):
    config, closed, _ = traced(arch, dtype, "forward")
    eqns = list(equations(closed.jaxpr))
    score_products = [e for e in eqns if e.primitive.name == "dot_general" and score_shaped(e.outvars[0].aval)]
    assert len(score_products) == config.n_layers, "one q.k product per layer, else the check reads nothing"
    bad = []
    for e in eqns:
        if e.primitive.name == "convert_element_type":
            continue  # a cast, e.g. the probabilities to the value dtype for the value product
        read = [] if e.primitive.name == "dot_general" else e.invars
        bad += [str(e) for v in [*read, *e.outvars] if score_shaped(v.aval) and is_half(v.aval)][:1]
    assert not bad, f"{arch} {dtype}: score-shaped half-precision intermediates:\n" + "\n".join(bad)
    count, half = narrow(eqns, "exp")
    assert count >= config.n_layers and not half, f"{arch} {dtype}: softmax exp in half precision:\n" + "\n".join(half)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("arch", ARCHS)
def test_norm_statistics_are_wide(arch, dtype):
    config, closed, _ = traced(arch, dtype, "forward")
    count, half = narrow(equations(closed.jaxpr), "rsqrt")
    assert count >= config.n_layers + 1, f"{arch}: {count} norms found"
    assert not half, f"{arch} {dtype}: norm statistics in half precision:\n" + "\n".join(half)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("arch", [a for a in ARCHS if tiny(a).position == "rope"])
def test_rope_tables_and_rotation_are_wide(arch, dtype):
    """The cos / sin tables are constants gathered at the positions: the gathered rows, and
    every equation that reads them (followed through layout changes and casts) up to the
    rotation's products, are wide."""
    _, closed, _ = traced(arch, dtype, "forward")
    jaxpr, tables = closed.jaxpr, set(closed.jaxpr.constvars)
    reads = [e for e in jaxpr.eqns if e.primitive.name == "gather" and e.invars[0] in tables]
    assert len(reads) >= 2, f"{arch}: no RoPE table read found"
    tainted, bad = {v for e in reads for v in e.outvars}, [str(e) for e in reads if is_half(e.outvars[0].aval)]
    for e in jaxpr.eqns:
        if not any(isinstance(v, jax.extend.core.Var) and v in tainted for v in e.invars):
            continue
        if e.primitive.name != "convert_element_type":
            bad += [str(e) for v in e.outvars if is_half(v.aval)][:1]
        if e.primitive.name in CARRIES_TABLE:
            tainted.update(e.outvars)
    assert not bad, f"{arch} {dtype}: RoPE tables or rotation in half precision:\n" + "\n".join(bad)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_router_logits_and_routing_are_wide(arch, dtype):
    config, closed, (_, _, captured) = traced(arch, dtype, "forward")
    for i in moe_layers(config):
        assert is_wide(captured[f"layers.{i}.router"].dtype), f"{arch} {dtype}: layer {i} router logits"
    eqns = list(equations(closed.jaxpr))
    top_k = [e for e in eqns if e.primitive.name == "top_k"]
    assert top_k and all(is_wide(e.invars[0].aval.dtype) for e in top_k), f"{arch} {dtype}: top_k in half precision"
    mlp_widths = {config.d_ff, config.expert_d_ff, config.shared_expert_d_ff}
    gates = [e for e in eqns if e.primitive.name == "logistic" and e.outvars[0].aval.shape[-1] not in mlp_widths]
    assert all(is_wide(e.outvars[0].aval.dtype) for e in gates), f"{arch} {dtype}: router or gate sigmoid in half"


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("arch", ["gemma2-9b", "palm-8b", "olmoe-1b-7b", "mixtral-8x7b", "mpt"])
def test_loss_and_final_softcap_are_wide(arch, dtype):
    config, closed, shape = traced(arch, dtype, "loss")
    assert is_wide(shape.dtype), f"{arch} {dtype}: the loss is {shape.dtype}"
    eqns = list(equations(closed.jaxpr))
    for primitive in ("exp", "log"):
        count, half = narrow(eqns, primitive)
        assert count and not half, f"{arch} {dtype}: {primitive} in half precision:\n" + "\n".join(half)
    caps = [e for e in eqns if e.primitive.name == "tanh" and e.outvars[0].aval.shape[-1] == config.vocab_size]
    assert len(caps) == (config.final_logit_softcap is not None), f"{arch}: final softcap not found"
    assert all(is_wide(e.outvars[0].aval.dtype) for e in caps), f"{arch} {dtype}: final softcap in half precision"
