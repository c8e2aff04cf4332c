"""`TorchAdapter`: the torch twin behind the conformance suite's adapter protocol.

    pytest conformance/ --arch llama3 --impl lmref.impl_torch.adapter:TorchAdapter

Each call builds the model from the canonical params (`Transformer.from_canonical`), runs
it without autograd and returns NumPy: logits as float32 (bf16 / fp16 results cast up,
float64 kept), the loss as a float, captures with each "moe" layer's router logits
(`layers.{i}.router`), and the experts each "moe" layer chose (`routing`).  Every method
takes the images of a multimodal case (`pixel_values` [N, C, H, W]); a capture with images
returns the image pathway's intermediates too (spec/captures.py).  The device defaults to
CUDA when torch sees one.

The twin has more than one kernel for two things: attention (`attn_impl`: SDPA, or the eager
scores-mask-softmax) and the mixture of experts (`moe_dispatch`, impl_torch/moe.py: "sorted",
the default, "loop" and "dense").  An adapter names the kernels it runs in its `name` (the
defaults are plain `torch`) and in its `version`, so a report says which one was checked; the
built-ins `torch`, `torch-eager`, `torch-moe-loop` and `torch-moe-dense` run each kernel
through the suite (conformance/adapters.py).
"""

from __future__ import annotations

import numpy as np
import torch

from lmref.impl_torch.model import Transformer
from lmref.impl_torch.moe import check_dispatch
from lmref.spec.captures import capture_names, moe_layers
from lmref.spec.config import ModelConfig

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


def _numpy(t: torch.Tensor) -> np.ndarray:
    """float64 stays float64; float32, bf16 and fp16 come back as float32."""
    return t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32).cpu().numpy()


def kernel_name(attn_impl: str, moe_dispatch: str) -> str:
    """"torch", then each kernel that is not the default: "torch-eager", "torch-moe-loop", ..."""
    return "-".join(["torch"] + ([attn_impl] if attn_impl != "sdpa" else [])
                    + ([f"moe-{moe_dispatch}"] if moe_dispatch != "sorted" else []))


class TorchAdapter:
    """forward, decode (static KV cache), loss, capture and routing in `dtype` on `device`."""

    name = "torch"
    version = f"impl_torch on torch {torch.__version__}"
    dtype = "float32"

    def __init__(self, dtype: str = "float32", *, attn_impl: str = "sdpa", moe_dispatch: str = "sorted",
                 device: str | None = None):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        self.dtype, self.attn_impl, self.moe_dispatch = dtype, attn_impl, check_dispatch(moe_dispatch)
        self.name = kernel_name(attn_impl, moe_dispatch)  # the kernels a report names
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.version = (f"impl_torch on torch {torch.__version__} ({self.device.type}, {dtype}, {attn_impl}, "
                        f"moe {moe_dispatch})")

    def _model(self, config: ModelConfig, params: dict) -> Transformer:
        return Transformer.from_canonical(config, params, dtype=_DTYPES[self.dtype], device=self.device,
                                          attn_impl=self.attn_impl, moe_dispatch=self.moe_dispatch)

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
# `--impl torch-moe-loop`, `--impl torch-moe-dense`: the mixtures of experts through the plain
# per-expert loop and through the static-shape dense dispatch (the one torch.export and ONNX
# use) instead of the sorted one; a model without "moe" layers runs as under `--impl torch`.
moe_loop = TorchAdapter(moe_dispatch="loop")
moe_dense = TorchAdapter(moe_dispatch="dense")
# `--impl lmref.impl_torch.adapter:bfloat16` (and `:eager_bfloat16`): the twin in bfloat16,
# judged by the bfloat16 row; the precision policy's upcasts act only here.
bfloat16 = TorchAdapter("bfloat16")
eager_bfloat16 = TorchAdapter("bfloat16", attn_impl="eager")
