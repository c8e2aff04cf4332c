"""Gradients: torch's autograd gradient of the loss (a float64 model, so the comparison is
tight) along random directions against central finite differences of the golden's float64
loss, (L(p + eps u) - L(p - eps u)) / 2 eps."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given

from lmref import impl_numpy
from lmref.impl_torch.model import torch_name
from tests.torch.helpers import build, examples, params_of

EPS = 1e-6  # truncation error ~ eps^2 |L'''| ~ 1e-12; rounding ~ 1e-16 |L| / eps ~ 1e-10
DIRECTIONS = 2


def canonical_grads(model, params: dict) -> dict[str, np.ndarray]:
    """d loss / d param in the canonical layout (nn.Linear gradients transposed back)."""
    grads = {}
    for name in params:
        target, transposed = torch_name(name)
        g = model.get_parameter(target).grad
        grads[name] = (g.T if transposed else g).numpy()
    return grads


def directional_fd(config, params: dict, tokens: np.ndarray, u: dict) -> float:
    plus = impl_numpy.loss(config, {k: v + EPS * u[k] for k, v in params.items()}, tokens)
    minus = impl_numpy.loss(config, {k: v - EPS * u[k] for k, v in params.items()}, tokens)
    return (plus - minus) / (2 * EPS)


@given(examples(min_seq=2))
def test_loss_gradient_matches_golden_finite_differences(example):
    config, seed, tokens = example
    params = params_of(config, seed, tokens)
    model = build(config, params, torch.float64, "sdpa")
    model.loss(tokens).backward()
    grads = canonical_grads(model, params)
    rng = np.random.default_rng(seed)
    for _ in range(DIRECTIONS):
        u = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        norm = np.sqrt(sum((d**2).sum() for d in u.values()))
        u = {k: d / norm for k, d in u.items()}  # a unit direction over all parameters
        autograd = sum(float((grads[k] * u[k]).sum()) for k in params)
        fd = directional_fd(config, params, tokens, u)
        assert abs(autograd - fd) <= 1e-8 + 1e-5 * abs(fd), f"autograd {autograd!r} vs finite differences {fd!r}"
