"""`JaxAdapter`: the JAX twin behind the conformance suite's adapter protocol
(conformance/adapters.py): forward, decode, loss, capture, routing (the experts each "moe"
layer chose, conformance/routing.py), each with the optional `pixel_values` of a multimodal
case (spec/vision.py), with name / version / dtype.

    pytest conformance/ --arch llama3 --impl lmref.impl_jax.adapter:JaxAdapter      (float32)
    pytest conformance/ --arch llama3 --impl lmref.impl_jax.adapter:bfloat16        (bfloat16)

The suite passes float64 NumPy params; they are checked (spec.params.check_params: the same
ParamsError as the golden) before being cast to the adapter's dtype.  Results come back as
NumPy arrays in that dtype (bfloat16 as ml_dtypes' bfloat16, which np.asarray gives).

float32 means float32 on every backend: JAX's default matmul precision for 32-bit inputs is
TF32 on recent NVIDIA GPUs and bfloat16 passes on TPUs (docs.jax.dev "Matmul precision"), which
the float32 tolerance row does not admit (conformance/TOLERANCES.md), so the adapter computes
under `jax.default_matmul_precision("float32")`.  On the CPU the logits are bit for bit those
computed without it (checked on llama3's, gemma3-4b's and mixtral-8x7b's cases).
"""

from __future__ import annotations

import jax
import numpy as np

from lmref import impl_jax
from lmref.impl_jax.moe import route
from lmref.spec.captures import moe_layers
from lmref.spec.config import ModelConfig

DTYPES = ("float32", "bfloat16")
route_jit = jax.jit(route, static_argnames="config")  # one compilation per shape, not one per op


class JaxAdapter:
    """impl_jax in `dtype` (float32 by default): every capability of the protocol."""

    name = "jax"
    version = jax.__version__

    def __init__(self, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"JaxAdapter dtype must be one of {DTYPES}, got {dtype!r}")
        self.dtype = dtype

    def _params(self, config: ModelConfig, params: dict) -> dict:
        impl_jax.check_params(config, params)  # before the cast, which would hide an integer dtype
        return impl_jax.from_canonical(params, self.dtype)

    def _evaluate(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values,
                  for_loss: bool = False) -> tuple[jax.Array, dict, jax.Array | None]:
        """(logits, the intermediates by name, the loss) from impl_jax.evaluate: forward, capture,
        routing and loss of a case run one jitted function on the same shapes, so it compiles once
        for the four (XLA compilation is nearly all of a tiny case's time)."""
        with jax.default_matmul_precision("float32"):
            return impl_jax.evaluate(config, self._params(config, params), tokens, pixel_values=pixel_values,
                                     for_loss=for_loss)

    def forward(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None) -> np.ndarray:
        return np.asarray(self._evaluate(config, params, tokens, pixel_values)[0])

    def decode(self, config: ModelConfig, params: dict, tokens: np.ndarray, prompt_len: int,
               pixel_values=None) -> np.ndarray:
        """Prefill `prompt_len` tokens (and the images), then one token at a time through the KV cache."""
        jax_params = self._params(config, params)
        with jax.default_matmul_precision("float32"):  # see the module docstring
            return np.asarray(impl_jax.decode(config, jax_params, tokens, prompt_len, pixel_values=pixel_values))

    def loss(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None) -> float:
        return float(self._evaluate(config, params, tokens, pixel_values, for_loss=True)[2])

    def capture(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None
                ) -> dict[str, np.ndarray]:
        captured = self._evaluate(config, params, tokens, pixel_values)[1]
        return {name: np.asarray(value) for name, value in captured.items()}

    def routing(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None
                ) -> dict[str, np.ndarray]:
        """{"layers.{i}": int [B, S, k]}: the experts each "moe" layer chose for each token, ranked
        from the captured router logits as the layer ranks them (impl_jax/moe.py, `route`)."""
        captured = self._evaluate(config, params, tokens, pixel_values)[1]
        return {f"layers.{i}": np.asarray(route_jit(config, captured[f"layers.{i}.router"])[0])
                for i in moe_layers(config)}


bfloat16 = JaxAdapter("bfloat16")  # `--impl lmref.impl_jax.adapter:bfloat16`
