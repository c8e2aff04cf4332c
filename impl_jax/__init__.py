"""The JAX twin: functional and jit-able, params a pytree that is the canonical dict.

`forward(config, params, tokens, cache=None, *, pixel_values=None, capture=None)`, `decode`,
`loss` (each with the optional images of a LLaVA config, impl_jax/vision.py) check their
inputs on the host like the golden and run jitted cores (`forward_jit`, `loss_jit`, with
`config` static); `evaluate` returns forward's logits and captures and loss's value from one
compiled function.  float32 by default, bfloat16 supported; float64 only inside
`jax.enable_x64(True)` (never switched on here).  See impl_jax/model.py.
"""

from lmref.impl_jax.cache import KVCache
from lmref.impl_jax.features import FEATURES
from lmref.impl_jax.model import (
    check_params, decode, evaluate, evaluate_core, evaluate_jit, forward, forward_core, forward_jit, from_canonical,
    loss, loss_core, loss_jit, to_canonical,
)

__all__ = [
    "FEATURES", "KVCache", "check_params", "decode", "evaluate", "evaluate_core", "evaluate_jit", "forward",
    "forward_core", "forward_jit", "from_canonical", "loss", "loss_core", "loss_jit", "to_canonical",
]
