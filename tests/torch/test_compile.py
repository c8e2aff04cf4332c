"""torch.compile: the tensor-only path (`Transformer.logits`) traces as one graph, prefill and
cached decode, and the inductor-compiled model equals the eager one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmref.impl_torch import Transformer
from lmref.spec import init_params, tiny
from tests.torch.helpers import FLOAT32, assert_close, numpy64

ARCHS = ("gpt2", "llama3", "olmo-alibi")  # learned / RoPE + GQA / ALiBi + clip_qkv


def model_and_tokens(arch: str, attn_impl: str = "sdpa") -> tuple[Transformer, torch.Tensor]:
    config = tiny(arch)
    model = Transformer.from_canonical(config, init_params(config, 0), attn_impl=attn_impl)
    return model, torch.from_numpy(np.random.default_rng(0).integers(0, config.vocab_size, size=(2, 7)))


TRACED = [("llama3", "sdpa")] + [
    pytest.param(arch, impl, marks=pytest.mark.slow)
    for arch in ARCHS for impl in ("sdpa", "eager") if (arch, impl) != ("llama3", "sdpa")
]


@pytest.mark.parametrize(("arch", "attn_impl"), TRACED)
def test_logits_trace_as_one_graph(arch, attn_impl):
    """fullgraph=True fails on any graph break; the "eager" backend skips code generation."""
    torch._dynamo.reset()
    model, tokens = model_and_tokens(arch, attn_impl)
    compiled = torch.compile(model.logits, backend="eager", fullgraph=True)
    positions = torch.arange(7)[None]  # [1, S]
    with torch.no_grad():
        expected = model(tokens)
        torch.testing.assert_close(compiled(tokens, positions), expected, rtol=0, atol=0)
        cache = model.new_cache(2)
        model.logits(tokens[:, :3], positions[:, :3], cache)  # an eager prefill writes keys 0..2
        cache.advance(3)
        cached = compiled(tokens[:, 3:], positions[:, 3:], cache)  # queries offset by the cache length
    assert_close(numpy64(cached), numpy64(expected[:, 3:]), FLOAT32, "compiled cached logits")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_inductor_compiled_model_equals_eager(arch):
    torch._dynamo.reset()
    model, tokens = model_and_tokens(arch)
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = numpy64(model(tokens))
        assert_close(numpy64(compiled(tokens)), expected, FLOAT32, "compiled prefill")
        cache = model.new_cache(2)
        steps = [compiled(tokens[:, :3], cache=cache)]
        steps += [compiled(tokens[:, t : t + 1], cache=cache) for t in range(3, 7)]
    assert_close(numpy64(torch.cat(steps, 1)), expected, FLOAT32, "compiled decode")
