"""`OnnxAdapter`: the exported graph in onnxruntime behind the conformance suite's adapter
protocol (`pytest conformance/ --impl onnx`).

Each config is traced once per process (dynamo export takes seconds); each (config, weights)
pair gets its graphs from that trace, re-weighted (export/reweight.py: the optimized graph's
weights written and its folds of them recomputed, export/refold.py, or the unoptimized graph's
parameter initializers rewritten, then the exporter's own optimizer), or, where the
re-weighting cannot account for every parameter, exported in full.  A config's first graphs
are written to a temporary directory with their weights as external data (the form `lmref
export` gives a large model: writing, checking and opening it took 0.16 to 0.23 s for the
167 MB of a 128-expert case, the inline form 0.7 to 1.4 s), checked (export/bundle.py)
and opened; its later weights reopen those graphs with the weights given in memory, where
export/reopen.py can (every graph refolded), or are written and opened the same way.  The
sessions run on the CPU provider, or on CUDA when onnxruntime has it (the provider is asserted,
export/runtime.py).  forward is one step from an empty past; decode prefills `prompt_len`
tokens, then feeds one token per step with the graph's own presents as the past; loss is the
mean next-token cross-entropy of forward's float32 logits over all S tokens, computed in
float64, plus PaLM's logit z-loss of those logits (impl_numpy.model `logit_z_loss`) where
`logit_z_loss_coef` weights it, and, for a mixture of experts, its auxiliary losses
(impl_numpy.moe `auxiliary_loss`) of the graph's own router logits (the `router_logits.{i}`
outputs, export/decoder.py): the loss is a function of the graph's outputs, as in training,
and is not itself in the graph.

A MoE graph also offers `routing` (the experts the graph chose: its `selected_experts.{i}`
outputs, the TopK indices its layers scattered) and `capture` of `layers.{i}.router` (its
router logits) with the logits.  A dense graph has no outputs for intermediates: capture is
NOT SUPPORTED there, but for a case with images, whose vision graph outputs the tower's
features and the projector's (`vision.features`, `projector`; export/vision_graphs.py).

A config with a vision tower runs the three graphs of export/multimodal.py: every method
takes `pixel_values` (the conformance protocol's images, conformance/adapters.py), the
prefill takes them, and the loss skips the targets that are image placeholders, as the
golden's does (impl_numpy.model `loss`).

As the golden does, each call checks the config's features first, then the tokens
(spec.inputs: the very messages of the other backends) and the images (spec/vision.py
`check_images`), before anything is exported or run.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import tempfile
from collections import OrderedDict

import numpy as np
import onnxruntime as ort

from lmref.export.bundle import open_bundle
from lmref.export.decoder import router_names
from lmref.export.exporter import OPSET, export_onnx, trace
from lmref.export.features import check_exportable
from lmref.export.multimodal import open_chain
from lmref.export.reopen import InMemory, in_memory
from lmref.export.reweight import ReweightError, Template, template
from lmref.export.runtime import DecoderSession, default_provider
from lmref.impl_numpy.model import log_softmax, logit_z_loss
from lmref.impl_numpy.moe import auxiliary_loss
from lmref.spec.captures import moe_layers
from lmref.spec.config import ModelConfig
from lmref.spec.inputs import check_tokens
from lmref.spec.params import same_weights
from lmref.spec.vision import check_images

CACHE_SIZE = 64  # sessions kept: the suite goes case by case, other callers may come back to earlier weights


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off for the block, then back as it was.  A trace makes
    hundreds of thousands of small objects (torch's symbolic shapes, sympy, the FX and ONNX
    graphs), and the collector, started by their count, walks them and the whole heap of torch
    and sympy hundreds of times a session to find little.  In the worker of `pytest conformance/
    --arch llama4-maverick --impl onnx` it ran 1581 times for 1.34 s, 858 times for 0.74 s with
    the sessions made without it, and side by side the checks of llama4-maverick and gemma3-4b
    took 0.88 to 0.99 of the time, with the same peak memory (benchmarks/README.md "Conformance
    time per arch").  The cycles made meanwhile are collected after it, at the collector's next run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def params_digest(params: dict[str, np.ndarray]) -> str:
    """sha256 over names, shapes, dtypes and bytes: the weights' identity (seed and config).
    The arrays are hashed through their buffers, not copied to bytes first (every call hashes
    all the weights: 167 MB for llama4-maverick's case, 0.09 s against 0.11 s)."""
    h = hashlib.sha256()
    for name in sorted(params):
        a = np.ascontiguousarray(params[name])
        h.update(f"{name}{a.shape}{a.dtype}".encode())
        h.update(a)
    return h.hexdigest()


class OnnxAdapter:
    """forward, decode and loss of the exported graph in onnxruntime (float32); capture and
    routing of a MoE graph (module docstring)."""

    name = "onnx"
    version = f"onnxruntime {ort.__version__}"
    dtype = "float32"

    def __init__(self, provider: str | None = None):
        self.provider = provider or default_provider()
        self.version = f"onnxruntime {ort.__version__} ({self.provider}, lmref export at opset {OPSET})"
        self._sessions: OrderedDict[tuple, DecoderSession] = OrderedDict()
        self._templates: dict[ModelConfig, Template | None] = {}  # None: this config is exported in full
        self._last: tuple | None = None  # (config, a copy of its weights, their session key) of the last call
        self.exports = 0  # how many times this adapter traced a model (the tests check the cache)
        self.rewrites = 0  # how many (config, weights) got their graphs by re-weighting a trace
        self._in_memory: dict[ModelConfig, InMemory | None] = {}  # None: each weights' export is written
        self.reopened = 0  # how many of those reopened the config's first export in memory (export/reopen.py)

    def session(self, config: ModelConfig, params: dict[str, np.ndarray]) -> DecoderSession:
        """The graph of (config, params) in onnxruntime, made on first use (module docstring)."""
        key = self._key(config, params)
        if key not in self._sessions:
            with gc_paused():
                self._sessions[key] = self._open(config, params)
            if len(self._sessions) > CACHE_SIZE:
                self._sessions.popitem(last=False)
        self._sessions.move_to_end(key)
        return self._sessions[key]

    def _open(self, config: ModelConfig, params: dict[str, np.ndarray]) -> DecoderSession:
        """A new session of (config, params): the config's first export reopened with these weights
        where it is kept in memory (export/reopen.py), else their graphs written to a temporary
        directory and opened (and kept in memory when they are the config's Template's)."""
        kept, memory = self._templates.get(config), self._in_memory.get(config)
        if memory is not None:
            try:
                session = memory.open(kept, params, self.provider)
                self.rewrites += 1
                self.reopened += 1
                return session
            except ReweightError:
                pass  # params the template cannot hold (names or shapes): export in full
        programs, templated = self.programs(config, params)
        with tempfile.TemporaryDirectory() as out:
            export_onnx(config, params, out, programs=programs, external_data=True)
            bundle = open_bundle(out)
            if templated and config not in self._in_memory:
                self._in_memory[config] = in_memory(bundle, self._templates[config])
            # onnxruntime holds the weights in memory once the sessions exist.
            return open_chain(bundle, self.provider)

    def _key(self, config: ModelConfig, params: dict[str, np.ndarray]) -> tuple:
        """(config, params_digest(params)): the last call's key when its config and weights are
        these (spec/params.py `same_weights`, one comparison, against the copy kept of them: 0.014 s
        for llama4-maverick's 167 MB where the digest takes 0.093 s; the suite calls forward,
        loss, capture and routing on each case's weights in turn), else the digest."""
        if self._last is not None and self._last[0] == config and same_weights(self._last[1], params):
            return self._last[2]
        key = (config, params_digest(params))
        self._last = None  # the old copy freed first: its memory is reused
        self._last = (config, {k: np.array(v, copy=True) for k, v in params.items()}, key)
        return key

    def programs(self, config: ModelConfig, params: dict[str, np.ndarray]) -> tuple[dict, bool]:
        """({role: ONNXProgram} of (config, params), whether they are the config's Template's):
        the config's first weights are traced (and its Template kept), later ones re-weighted; a
        full trace where there is no Template or the params do not fit it."""
        if config not in self._templates:
            self.exports += 1
            self._templates[config], programs = template(config, params)
            return programs, self._templates[config] is not None
        kept = self._templates[config]
        if kept is not None:
            try:
                programs = kept.programs(params)
                self.rewrites += 1
                return programs, True
            except ReweightError:
                pass  # params the template cannot hold (names or shapes): export in full
        self.exports += 1
        return trace(config, params), False

    def outputs(self, config: ModelConfig, params: dict, tokens: np.ndarray, prompt_len: int | None = None,
                pixel_values: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The graph's outputs over every position (DecoderSession.prefill_and_decode_outputs):
        one step from an empty past, or `prompt_len` tokens then one per step, the images in
        the first step.  The features, then the tokens and the images, are checked first."""
        check_exportable(config)
        tokens = check_tokens(config, tokens)
        prompt_len = tokens.shape[1] if prompt_len is None else prompt_len
        if not 1 <= prompt_len <= tokens.shape[1]:
            raise ValueError(f"prompt_len must be in [1, {tokens.shape[1]}], got {prompt_len}")
        images = check_images(config, tokens, pixel_values, prompt_len=prompt_len)
        prefill = {} if images is None else {"pixel_values": images}
        return self.session(config, params).prefill_and_decode_outputs(tokens, prompt_len, **prefill)

    def forward(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None) -> np.ndarray:
        return self.outputs(config, params, tokens, pixel_values=pixel_values)["logits"]

    def decode(self, config: ModelConfig, params: dict, tokens: np.ndarray, prompt_len: int,
               pixel_values=None) -> np.ndarray:
        return self.outputs(config, params, tokens, prompt_len, pixel_values)["logits"]

    def loss(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None) -> float:
        """impl_numpy.loss from the graph's outputs (module docstring)."""
        check_exportable(config)
        tokens = check_tokens(config, tokens)
        if tokens.shape[1] < 2:
            raise ValueError(f"loss needs sequences of at least 2 tokens, got {tokens.shape[1]}")
        out = self.outputs(config, params, tokens, pixel_values=pixel_values)
        targets = tokens[:, 1:]  # [B, S-1]
        scored = np.ones(targets.shape, bool) if config.vision is None else targets != config.vision.image_token_id
        if not scored.any():
            raise ValueError("loss has no target: every next token is an image placeholder")
        rows = out["logits"][:, :-1][scored].astype(np.float64)  # [T, V]: the positions with a text target
        picked = np.take_along_axis(log_softmax(rows), targets[scored][:, None], axis=-1)  # [T, 1]
        total = float(-picked.mean())
        if config.logit_z_loss_coef > 0:
            total += config.logit_z_loss_coef * logit_z_loss(rows)
        if config.moe is not None:
            total += auxiliary_loss(config, [out[name].astype(np.float64) for name in router_names(config)])
        return total

    def capture(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None
                ) -> dict[str, np.ndarray]:
        """What the graphs output of the intermediates, with the logits: the vision graph's
        `vision.features` [N, T, Dv] and `projector` [N, T, d_model] of a case with images, a MoE
        graph's router logits as `layers.{i}.router` [B, S, E]; NotImplementedError (NOT
        SUPPORTED) when there are none (a dense graph without images)."""
        check_exportable(config)
        check_images(config, check_tokens(config, tokens), pixel_values)  # bad input: the golden's error first
        if config.moe is None and pixel_values is None:
            raise NotImplementedError("capture: the graph of a dense model has no outputs for intermediates (a MoE "
                                      "graph's router_logits.{i}, and with images the vision graph's features, are "
                                      "its only ones)")
        out = self.outputs(config, params, tokens, pixel_values=pixel_values)
        captured = {}
        if pixel_values is not None:  # checked by `outputs`
            images = self.session(config, params).image_outputs(np.asarray(pixel_values))
            captured |= {"vision.features": images["vision_features"], "projector": images["image_features"]}
        captured |= {f"layers.{i}.router": out[f"router_logits.{i}"] for i in moe_layers(config)}
        return captured | {"logits": out["logits"]}

    def routing(self, config: ModelConfig, params: dict, tokens: np.ndarray, pixel_values=None
                ) -> dict[str, np.ndarray]:
        """{"layers.{i}": int64 [B, S, k]}: the graph's selected_experts.{i}, the TopK indices its
        "moe" layers scattered (export/decoder.py); NotImplementedError for a dense graph."""
        if config.moe is None:
            raise NotImplementedError("routing: the graph of a dense model has no experts to choose (a MoE graph's "
                                      "selected_experts.{i} are its choice)")
        out = self.outputs(config, params, tokens, pixel_values=pixel_values)
        return {f"layers.{i}": out[f"selected_experts.{i}"] for i in moe_layers(config)}
