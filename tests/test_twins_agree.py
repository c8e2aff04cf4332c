"""The two twins against each other: torch's autograd and JAX's grad of the same float64 loss
give the same gradient for every parameter (not only along a direction, as each twin's test
against the golden's finite differences checks)."""

from __future__ import annotations

import jax
import numpy as np
import torch
from hypothesis import given, note, settings

from lmref import impl_jax
from lmref.impl_torch import Transformer
from lmref.impl_torch.model import torch_name
from lmref.spec.params import init_params
from tests.torch.helpers import examples

# Two float64 autodiff implementations of one function: they differ by summation order only.
RTOL = 1e-9


def torch_grads(config, params: dict, tokens: np.ndarray) -> dict[str, np.ndarray]:
    model = Transformer.from_canonical(config, params, dtype=torch.float64)
    model.loss(tokens).backward()
    grads = {}
    for name in params:
        target, transposed = torch_name(name)
        g = model.get_parameter(target).grad
        grads[name] = (g.T if transposed else g).numpy()  # nn.Linear's [out, in] back to [in, out]
    return grads


def jax_grads(config, params: dict, tokens: np.ndarray) -> dict[str, np.ndarray]:
    with jax.enable_x64(True):
        params64 = impl_jax.from_canonical(params, "float64")
        grads = jax.grad(impl_jax.loss, argnums=1)(config, params64, tokens)
        return {k: np.asarray(v) for k, v in grads.items()}


@settings(max_examples=10)  # fewer than the profile: each example compiles a JAX backward pass
@given(examples(min_seq=2))
def test_torch_and_jax_gradients_agree(example):
    config, seed, tokens = example
    note(f"config = {config!r}\nparams = spec.init_params(config, {seed})\ntokens = np.array({tokens.tolist()})")
    params = init_params(config, seed)
    t, j = torch_grads(config, params, tokens), jax_grads(config, params, tokens)
    assert set(t) == set(j) == set(params)
    scale = max(float(np.abs(g).max()) for g in t.values())
    for name in params:
        np.testing.assert_allclose(j[name], t[name], rtol=RTOL, atol=RTOL * scale, err_msg=name)
