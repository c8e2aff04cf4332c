"""The core issue's negative controls applied to the twins: each broken twin FAILS the suite
for the arch it breaks, while the unbroken twins pass (tests/torch, tests/jax, and
`pytest conformance/ --impl torch|jax`).

Config mistakes (a misread hyperparameter) wrap any backend.  Code mistakes patch the twin's
function of the same name as the golden's (the backends mirror each other module for
module), so the same bug is planted in each.
"""

from __future__ import annotations

import contextlib

import pytest

from lmref.impl_torch import attention as torch_attention
from lmref.impl_torch import masks as torch_masks
from lmref.impl_jax.adapter import JaxAdapter
from lmref.impl_torch.adapter import TorchAdapter
from tests.control_kinds import kept_params
from tests.controls import NEGATIVE_CONTROLS, ConfigMistake, run_arch

CONFIG_MISTAKES = [c for c in NEGATIVE_CONTROLS if isinstance(c.adapter, ConfigMistake)]
TWINS = {"torch": TorchAdapter, "jax": JaxAdapter}


class Broken:
    """A twin's adapter run with a wrong config and/or with one function of it patched."""

    dtype = "float32"

    def __init__(self, twin, adjust=None, patch: tuple | None = None):
        """`adjust`: config -> the wrong config (a ConfigMistake's `adjust`); none: the right one."""
        self.twin, self.adjust, self.patch = twin, adjust or (lambda config: config), patch
        self.name = f"broken-{twin.name}"

    @contextlib.contextmanager
    def _patched(self):
        if self.patch is None:
            yield
            return
        module, attr, replacement = self.patch
        original = getattr(module, attr)
        setattr(module, attr, replacement)
        try:
            yield
        finally:
            setattr(module, attr, original)

    def forward(self, config, params, tokens, pixel_values=None):
        wrong = self.adjust(config)
        with self._patched():
            return self.twin.forward(wrong, kept_params(wrong, params), tokens, pixel_values=pixel_values)

    def decode(self, config, params, tokens, prompt_len, pixel_values=None):
        wrong = self.adjust(config)
        with self._patched():
            return self.twin.decode(wrong, kept_params(wrong, params), tokens, prompt_len, pixel_values=pixel_values)

    def loss(self, config, params, tokens, pixel_values=None):
        """The twin's loss of the wrong config: a mistake in the objective alone (PaLM's z-loss
        dropped) shows only here."""
        wrong = self.adjust(config)
        with self._patched():
            return self.twin.loss(wrong, kept_params(wrong, params), tokens, pixel_values=pixel_values)


def assert_fails(adapter, arch: str) -> None:
    statuses = [r.status for _, _, r in run_arch(adapter, arch)]
    assert "ERROR" not in statuses
    assert "FAIL" in statuses, f"{adapter.name} passed the {arch} suite"


@pytest.mark.parametrize("twin", list(TWINS))
@pytest.mark.parametrize("control", CONFIG_MISTAKES, ids=[c.adapter.name for c in CONFIG_MISTAKES])
def test_config_mistakes_fail_on_the_twins(twin, control):
    assert_fails(Broken(TWINS[twin](), adjust=control.adapter.adjust), control.arch)


def _queries_tiled(q, n_kv):
    """GQA grouped wrong: query head h reads kv head h % n_kv ([B, KV, G, Sq, D], as group_queries)."""
    b, h, sq, d = q.shape
    return q.reshape(b, h // n_kv, n_kv, sq, d).transpose(1, 2)


def _mask_sees_next(q_positions, k_positions):
    """Causal mask off by one: each query also sees the next key ([P, Sq, Sk], as masks.causal)."""
    return k_positions[:, None, :] <= q_positions[:, :, None] + 1


def _window_one_too_wide(q_positions, k_positions, window):
    """Sliding window off by one: q - W <= k <= q ([P, Sq, Sk], as masks.sliding)."""
    return torch_masks.causal(q_positions, k_positions) & (k_positions[:, None, :] >= q_positions[:, :, None] - window)


@pytest.mark.parametrize("patch,arch", [
    ((torch_attention, "group_queries", _queries_tiled), "llama3"),
    ((torch_masks, "causal", _mask_sees_next), "llama2"),
    ((torch_masks, "sliding", _window_one_too_wide), "mistral-7b"),
], ids=["gqa_grouped_wrong", "causal_mask_off_by_one", "sliding_window_off_by_one"])
def test_code_mistakes_fail_on_the_torch_twin(patch, arch):
    # The eager kernel is the one that calls group_queries (SDPA groups heads itself), and it
    # builds the mask for every layer (SDPA's is_causal fast path skips masks.causal).
    assert_fails(Broken(TorchAdapter(attn_impl="eager"), patch=patch), arch)


def test_the_unbroken_wrapper_passes():
    """The wrapper itself changes nothing: without a mistake the torch twin passes."""
    statuses = {r.status for _, cap, r in run_arch(Broken(TorchAdapter()), "llama3") if cap == "forward"}
    assert statuses == {"PASS"}
