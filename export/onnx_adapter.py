"""`OnnxAdapter`: the exported graph in onnxruntime behind the conformance suite's adapter
protocol (`pytest conformance/ --impl onnx`).

Each (config, weights) pair is exported once per process (dynamo export takes seconds) to a
temporary directory, checked (export/bundle.py) and opened on the CPU provider, or on CUDA
when onnxruntime has it (the provider is asserted, export/runtime.py).  forward is one step
from an empty past; decode prefills `prompt_len` tokens, then feeds one token per step
with the graph's own presents as the past; loss is the mean next-token cross-entropy of
forward's float32 logits, computed in float64.  capture is not offered (the graph has no
outputs for intermediates): NOT SUPPORTED.

As the golden does, each call checks the config's features first, then the tokens
(spec.inputs: the very messages of the other backends), before anything is exported or run.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import OrderedDict

import numpy as np
import onnxruntime as ort

from lmref.impl_numpy.model import log_softmax
from lmref.export.bundle import open_bundle
from lmref.export.exporter import OPSET, export_onnx
from lmref.export.features import check_exportable
from lmref.export.runtime import DecoderSession, default_provider, open_session
from lmref.spec.config import ModelConfig
from lmref.spec.inputs import check_tokens

CACHE_SIZE = 64  # sessions kept: the suite runs each capability over every case, so keep them all


def params_digest(params: dict[str, np.ndarray]) -> str:
    """sha256 over names, shapes, dtypes and bytes: the weights' identity (seed and config)."""
    h = hashlib.sha256()
    for name in sorted(params):
        a = np.ascontiguousarray(params[name])
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class OnnxAdapter:
    """forward, decode and loss of the exported graph in onnxruntime (float32)."""

    name = "onnx"
    version = f"onnxruntime {ort.__version__}"
    dtype = "float32"

    def __init__(self, provider: str | None = None):
        self.provider = provider or default_provider()
        self.version = f"onnxruntime {ort.__version__} ({self.provider}, lmref export at opset {OPSET})"
        self._sessions: OrderedDict[tuple, DecoderSession] = OrderedDict()
        self.exports = 0  # how many graphs this adapter exported (the tests check the cache)

    def session(self, config: ModelConfig, params: dict[str, np.ndarray]) -> DecoderSession:
        """The graph of (config, params) in onnxruntime, exported on first use."""
        key = (config, params_digest(params))
        if key not in self._sessions:
            with tempfile.TemporaryDirectory() as out:
                export_onnx(config, params, out)
                bundle = open_bundle(out)
                # onnxruntime holds the weights in memory once the session exists.
                session = open_session(bundle.model_path, self.provider)
            self.exports += 1
            self._sessions[key] = DecoderSession(session, config)
            if len(self._sessions) > CACHE_SIZE:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(key)
        return self._sessions[key]

    def forward(self, config: ModelConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
        check_exportable(config)
        tokens = check_tokens(config, tokens)
        return self.session(config, params).prefill_and_decode(tokens, tokens.shape[1])

    def decode(self, config: ModelConfig, params: dict, tokens: np.ndarray, prompt_len: int) -> np.ndarray:
        check_exportable(config)
        tokens = check_tokens(config, tokens)
        if not 1 <= prompt_len <= tokens.shape[1]:
            raise ValueError(f"prompt_len must be in [1, {tokens.shape[1]}], got {prompt_len}")
        return self.session(config, params).prefill_and_decode(tokens, prompt_len)

    def loss(self, config: ModelConfig, params: dict, tokens: np.ndarray) -> float:
        check_exportable(config)
        tokens = check_tokens(config, tokens)
        if tokens.shape[1] < 2:
            raise ValueError(f"loss needs sequences of at least 2 tokens, got {tokens.shape[1]}")
        logp = log_softmax(self.forward(config, params, tokens[:, :-1]).astype(np.float64))  # [B, S-1, V]
        picked = np.take_along_axis(logp, tokens[:, 1:, None], axis=-1)  # [B, S-1, 1]
        return float(-picked.mean())
