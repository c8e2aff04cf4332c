"""The torch twin's ring buffers for sliding layers (impl_torch/cache.py): a layer of window
W keeps its last W - 1 keys whatever the sequence's length, and decoding through them gives
the golden's logits for sequences several times the window, prefills longer than the
window included; keeping one slot fewer (W - 2) fails the comparison.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmref import impl_numpy  # noqa: E402
from lmref.impl_torch import Transformer  # noqa: E402
from lmref.impl_torch import cache as cache_module  # noqa: E402
from lmref.impl_torch.attention import ATTN_IMPLS  # noqa: E402
from lmref.spec import init_params  # noqa: E402
from lmref.spec.plan import EMPTY_SLOT, layer_plan  # noqa: E402
from lmref.spec.presets import tiny  # noqa: E402
from tests.torch.helpers import FLOAT32, FLOAT64, assert_close, numpy64  # noqa: E402

WINDOWS = (1, 2, 3, 5)
PATTERNS = (("sliding",), ("sliding", "global"), ("global", "sliding"))
CONFIGS = {f"W{w}-{'-'.join(p)}": tiny("llama3", attn_pattern=p, sliding_window=w) for w in WINDOWS for p in PATTERNS}
CONFIGS["mistral-7b"] = tiny("mistral-7b")  # window 5, every layer sliding


def window(config) -> int:
    return config.sliding_window


def tokens_for(config, seed: int = 0) -> np.ndarray:
    """[2, 4W + 4]: several times the window."""
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(2, 4 * window(config) + 4))


def sliding_layers(config) -> list[int]:
    return [plan.index for plan in layer_plan(config) if plan.mask.kind == "sliding"]


def model64(config, attn_impl: str = "sdpa") -> Transformer:
    return Transformer.from_canonical(config, init_params(config, 3), dtype=torch.float64, attn_impl=attn_impl)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ring_decode_equals_the_golden(name):
    """One token at a time after a 1-token prompt, and after a prompt longer than the window
    (the prefill attends to its own keys, then the ring keeps the last W - 1)."""
    config = CONFIGS[name]
    tokens = tokens_for(config)
    ref = impl_numpy.forward(config, init_params(config, 3), tokens)
    for attn_impl in ATTN_IMPLS:
        model = model64(config, attn_impl)
        for prompt_len in (1, window(config) + 2):
            got = numpy64(model.decode(tokens, prompt_len))
            assert_close(got, ref, FLOAT64, f"{name} {attn_impl} decode after a prompt of {prompt_len}")


@pytest.mark.parametrize("name", ["W3-sliding-global", "W2-global-sliding", "mistral-7b"])
def test_chunks_through_the_ring_equal_the_golden_decode(name):
    """Chunks of W + 1 and of 2 tokens through one cache: impl_numpy.decode's logits."""
    config = CONFIGS[name]
    tokens = tokens_for(config, seed=1)
    ref = impl_numpy.decode(config, init_params(config, 3), tokens, window(config) + 1)
    model = model64(config)
    cache = model.new_cache(2)
    cuts = [window(config) + 1, window(config) + 3]
    got = torch.cat([model(chunk, cache=cache) for chunk in np.split(tokens, cuts, axis=1)], dim=1)
    assert_close(numpy64(got), ref, FLOAT64, f"{name} chunked")


@pytest.mark.parametrize("name", ["W1-sliding", "W3-sliding-global", "W5-global-sliding", "mistral-7b"])
def test_a_sliding_layer_keeps_w_minus_1_slots_whatever_the_length(name):
    """The buffers are allocated once: W - 1 slots for a sliding layer, the capacity for the
    others, the same tensors after every step; the ring holds the last W - 1 positions."""
    config = CONFIGS[name]
    w, tokens = window(config), tokens_for(config)
    model = model64(config)
    cache = model.new_cache(2)
    buffers = list(cache.keys) + list(cache.values)
    model(tokens[:, :3], cache=cache)
    for t in range(3, tokens.shape[1]):
        model(tokens[:, t : t + 1], cache=cache)
        assert all(a is b for a, b in zip(buffers, list(cache.keys) + list(cache.values)))
    for i in range(config.n_layers):
        slots = w - 1 if i in sliding_layers(config) else config.max_seq_len
        assert cache.keys[i].shape == cache.values[i].shape == (2, config.n_kv_heads, slots, config.head_dim)
    assert sorted(cache.ring_positions.tolist()) == list(range(tokens.shape[1] - (w - 1), tokens.shape[1]))


def test_a_ring_never_holds_more_than_the_capacity():
    """A window wider than the capacity: min(W - 1, capacity) slots, the golden's logits."""
    config = CONFIGS["W5-sliding-global"]
    tokens = tokens_for(config)[:, :3]
    model = model64(config)
    cache = model.new_cache(2, capacity=3)
    assert cache.keys[0].shape[2] == 3 and cache.keys[1].shape[2] == 3
    got = torch.cat([model(tokens[:, t : t + 1], cache=cache) for t in range(3)], dim=1)
    assert_close(numpy64(got), impl_numpy.forward(config, init_params(config, 3), tokens), FLOAT64, "capacity 3")
    assert cache.ring_positions.tolist() == [0, 1, 2] and cache.positions.tolist() == [0, 1, 2]


def test_an_unwritten_ring_slot_is_empty():
    config = CONFIGS["W5-sliding-global"]
    model = model64(config)
    cache = model.new_cache(1)
    model(np.array([[1, 2]]), cache=cache)
    assert cache.ring_positions.tolist() == [0, 1, EMPTY_SLOT, EMPTY_SLOT]


@pytest.mark.parametrize("name", ["W2-sliding", "W3-sliding-global", "W5-global-sliding", "mistral-7b"])
def test_a_ring_one_slot_short_fails(name, monkeypatch):
    """Negative control: a ring of W - 2 slots (off by one) loses the key W - 1 back, and the
    comparison with the golden fails even at the float32 row."""
    real = cache_module.ring_slots
    monkeypatch.setattr(cache_module, "ring_slots",
                        lambda config, capacity: [None if n is None else n - 1 for n in real(config, capacity)])
    config = CONFIGS[name]
    tokens = tokens_for(config)
    ref = impl_numpy.forward(config, init_params(config, 3), tokens)
    got = numpy64(model64(config).decode(tokens, 1))
    with pytest.raises(AssertionError, match="nmse"):
        assert_close(got, ref, FLOAT32, f"{name} with a ring of W - 2 slots")


def test_the_ring_traces_as_one_graph():
    """torch.compile(fullgraph=True) of the tensor-only path through a ring: no graph break."""
    torch._dynamo.reset()
    config = CONFIGS["W3-sliding-global"]
    model = Transformer.from_canonical(config, init_params(config, 3))
    tokens = torch.from_numpy(tokens_for(config)[:, :8])
    positions = torch.arange(8)[None]  # [1, S]
    compiled = torch.compile(model.logits, backend="eager", fullgraph=True)
    with torch.no_grad():
        expected = model(tokens)
        cache = model.new_cache(2)
        steps = [compiled(tokens[:, :5], positions[:, :5], cache)]
        cache.advance(5)
        for t in range(5, 8):
            steps.append(compiled(tokens[:, t : t + 1], positions[:, t : t + 1], cache))
            cache.advance(1)
    assert_close(numpy64(torch.cat(steps, dim=1)), numpy64(expected), FLOAT32, "compiled ring decode")
