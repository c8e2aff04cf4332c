"""`TorchAdapter`: the torch twin behind the conformance suite's adapter protocol.

    pytest conformance/ --arch llama3 --impl lmref.impl_torch.adapter:TorchAdapter

Each call builds the model from the canonical params (`Transformer.from_canonical`), runs
it without autograd and returns NumPy: logits as float32 (bf16 / fp16 results cast up,
float64 kept), the loss as a float, captures with each "moe" layer's router logits
(`layers.{i}.router`), and the experts each "moe" layer chose (`routing`).  Every method
takes the images of a multimodal case (`pixel_values` [N, C, H, W]); a capture with images
returns the image pathway's intermediates too (spec/captures.py).  The device defaults to
CUDA when torch sees one.
"""

from __future__ import annotations

import numpy as np
import torch

from lmref.impl_torch.model import Transformer
from lmref.spec.captures import capture_names, moe_layers
from lmref.spec.config import ModelConfig

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


def _numpy(t: torch.Tensor) -> np.ndarray:
    """float64 stays float64; float32, bf16 and fp16 come back as float32."""
    return t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32).cpu().numpy()


class TorchAdapter:
    """forward, decode (static KV cache), loss, capture and routing in `dtype` on `device`."""

    name = "torch"
    version = f"impl_torch on torch {torch.__version__}"
    dtype = "float32"

    def __init__(self, dtype: str = "float32", *, attn_impl: str = "sdpa", device: str | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        self.dtype, self.attn_impl = dtype, attn_impl
        self.name = "torch" if attn_impl == "sdpa" else f"torch-{attn_impl}"  # the kernel a report names
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.version = f"impl_torch on torch {torch.__version__} ({self.device.type}, {dtype}, {attn_impl})"

    def _model(self, config: ModelConfig, params: dict) -> Transformer:
        return Transformer.from_canonical(config, params, dtype=_DTYPES[self.dtype], device=self.device,
                                          attn_impl=self.attn_impl)

    @torch.no_grad()
    def forward(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None) -> np.ndarray:
        return _numpy(self._model(config, params)(tokens, pixel_values=pixel_values))

    @torch.no_grad()
    def decode(self, config: ModelConfig, params: dict, tokens: np.ndarray, prompt_len: int,
               pixel_values=None) -> np.ndarray:
        return _numpy(self._model(config, params).decode(tokens, prompt_len, pixel_values=pixel_values))

    @torch.no_grad()
    def loss(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None) -> float:
        return float(self._model(config, params).loss(tokens, pixel_values=pixel_values))

    @torch.no_grad()
    def capture(self, config: ModelConfig, params: dict, tokens: np.ndarray,
                pixel_values=None) -> dict[str, np.ndarray]:
        captured: dict = {}
        self._model(config, params)(tokens, capture=captured, pixel_values=pixel_values)
        return {name: _numpy(captured[name]) for name in capture_names(config, images=pixel_values is not None)}

    @torch.no_grad()
    def routing(self, config: ModelConfig, params: dict, tokens: np.ndarray,
                pixel_values=None) -> dict[str, np.ndarray]:
        """{"layers.{i}": int64 [B, S, k]}: the experts each "moe" layer chose for each token."""
        model = self._model(config, params)
        captured: dict = {}
        model(tokens, capture=captured, pixel_values=pixel_values)
        return {f"layers.{i}": model.layers[i].mlp.route(captured[f"layers.{i}.router"])[0].cpu().numpy()
                for i in moe_layers(config)}


# `--impl torch-eager`: the same twin through its eager attention kernel (explicit scores, mask
# and softmax) instead of SDPA, so a mistake in either kernel fails some conformance run.
eager = TorchAdapter(attn_impl="eager")
