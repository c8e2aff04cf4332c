"""`lmref verify`: an implementation against the float64 golden on a real checkpoint's weights.

    result = verify("path/to/hf_model", load_adapter("torch"), captures=True)
    print("\\n".join(report_lines(result)))     # conformance/verify_report.py

The golden runs layer by layer (`layered_forward`): the embedding, then each decoder layer with
only its own params (conformance/verify_weights.py reads them from the safetensors files, in
float64, and they are dropped before the next layer is read), then the final norm and the head.
Its math is impl_numpy's own `embed`, `block`, `apply_norm` and `head`, in the order of
`impl_numpy.forward`, so the logits are the golden's to the bit (tests/test_verify.py).

The implementation is an adapter as the conformance suite resolves it (conformance/adapters.py:
`numpy`, `torch`, `jax`, `hf`, ... or `package.module:attr`); it gets the whole canonical
params in float64 (the adapter protocol) and the prompt, once for `forward` and, with
`captures`, once for `capture`. `lmref verify` runs it in a worker process, as the suite does
(conformance/worker_adapter.py: an adapter that ends its process or hangs is an ERROR, not the
end of verify), which reads the params from the directory itself. Its logits are gated by
conformance/metrics.py `compare` and `gate` under the tolerance row of its declared dtype
(conformance/tolerances.py); its captured intermediates (spec/captures.py names) by
`locate_divergence` with that row's nmse, which names the first component, hence the first
layer, that leaves the golden.

The prompt: `fixed_prompt(vocab)`, PROMPT_LEN tokens t_i = (17 + 7919 i) mod vocab, batch 1 (a
prime stride spreads them over the vocabulary, and 17 avoids the usual special ids 0..2), or
the caller's tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lmref.conformance.adapters import Adapter, AdapterCallError, AdapterNotSupported
from lmref.conformance.metrics import Divergence, Metrics, compare, gate, locate_divergence
from lmref.conformance.results import AdapterResultError
from lmref.conformance.tolerances import Tolerance, Tolerances
from lmref.conformance.verify_weights import EMBED, HEAD, LayeredCheckpoint
from lmref.conformance.worker_adapter import WorkerAdapter
from lmref.impl_numpy.features import FEATURES
from lmref.impl_numpy.model import BACKEND, block, embed, head
from lmref.impl_numpy.norms import apply_norm
from lmref.spec.features import check_supported
from lmref.spec.inputs import check_tokens
from lmref.spec.plan import LayerPlan, layer_plan

PROMPT_LEN = 8


def fixed_prompt(vocab_size: int) -> np.ndarray:
    """The default prompt [1, PROMPT_LEN]: t_i = (17 + 7919 i) mod vocab_size (module docstring)."""
    return ((17 + 7919 * np.arange(PROMPT_LEN)) % vocab_size)[None, :].astype(np.int64)


# --- the golden, one layer at a time -----------------------------------------------------------


def embed_step(checkpoint: LayeredCheckpoint, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """[B, S] -> [B, S, d_model]; the embedding params are dropped on return."""
    return embed(checkpoint.config, checkpoint.read(EMBED), tokens, positions)


def layer_step(checkpoint: LayeredCheckpoint, plan: LayerPlan, h: np.ndarray, positions: np.ndarray,
                capture: dict | None) -> np.ndarray:
    """Layer `plan.index` on h [B, S, d_model], with only its own params (dropped on return)."""
    return block(checkpoint.config, plan, checkpoint.read(f"layers.{plan.index}"), h, positions, None, capture)


def head_step(checkpoint: LayeredCheckpoint, h: np.ndarray, capture: dict | None) -> np.ndarray:
    """The final norm and the head: [B, S, d_model] -> logits [B, S, vocab]."""
    params = checkpoint.read(HEAD)
    h = apply_norm(checkpoint.config, params, "final_norm", h)
    logits = head(checkpoint.config, params, h)
    if capture is not None:
        capture |= {"final_norm": h, "logits": logits}
    return logits


def layered_forward(checkpoint: LayeredCheckpoint, tokens: np.ndarray, capture: dict | None = None) -> np.ndarray:
    """The golden's logits [B, S, vocab] of `tokens` [B, S], holding one layer's params at a time;
    `capture` receives spec/captures.py's intermediates, as `impl_numpy.forward` gives them."""
    config = checkpoint.config
    check_supported(config, BACKEND, FEATURES)
    tokens = check_tokens(config, tokens)
    positions = np.arange(tokens.shape[1])
    h = embed_step(checkpoint, tokens, positions)
    if capture is not None:
        capture["embed"] = h
    for plan in layer_plan(config):
        h = layer_step(checkpoint, plan, h, positions, capture)
    return head_step(checkpoint, h, capture)


# --- the comparison ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One captured intermediate against the golden's."""

    name: str
    max_abs: float
    nmse: float
    diverged: bool


@dataclass
class Verification:
    """Everything `lmref verify` found (conformance/verify_report.py prints it)."""

    directory: str
    model_type: str
    n_layers: int
    adapter: Adapter
    row: str
    tolerance: Tolerance
    tokens: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    logits: Metrics | None = None
    logits_failed: list[str] = field(default_factory=list)
    capture_note: str = "not asked (--captures compares each layer)"
    divergence: Divergence | None = None
    components: list[Component] = field(default_factory=list)
    error: str | None = None  # why the implementation gave no logits to compare
    error_status: str = "ERROR"  # as the suite names it: FAIL (an invalid result), NOT SUPPORTED, ERROR
    run_overrides: dict = field(default_factory=dict)  # rows changed with --tolerance, said beside the row

    @property
    def first_layer(self) -> int | None:
        """The index of the layer holding the first diverging component; None when none did or
        it is outside the layers (embed, final_norm, logits)."""
        first = self.divergence.first if self.divergence else None
        return int(first.split(".")[1]) if first and first.startswith("layers.") else None

    @property
    def capture_failed(self) -> list[str]:
        """Why --captures fails besides a divergence, as the suite's capture check fails
        (conformance/runner.py): a component of the wrong shape, none of the golden's compared,
        or nothing compared but the logits (which the logits line already judges)."""
        d = self.divergence
        if d is None:
            return []
        failed = [f"{len(d.misshaped)} component(s) of the wrong shape"] if d.misshaped else []
        if d.none_compared:
            failed.append(f"none of the golden's components was captured (got: {', '.join(d.unknown) or 'nothing'})")
        elif d.only_logits:
            failed.append("nothing but the logits was captured: capture must return intermediates")
        return failed

    @property
    def verdict(self) -> str:
        """PASS, FAIL, or without logits to compare `error_status` (conformance/adapters.py's kinds)."""
        if self.error is not None:
            return self.error_status
        diverged = self.divergence is not None and self.divergence.first is not None
        return "FAIL" if self.logits_failed or diverged or self.capture_failed else "PASS"


def compare_captures(golden: dict[str, np.ndarray], captured: dict[str, np.ndarray], threshold: float
                     ) -> tuple[Divergence, list[Component]]:
    """`locate_divergence` and, for each compared component, its max abs difference."""
    d = locate_divergence(golden, captured, threshold)
    components = [Component(name, float(np.max(np.abs(captured[name] - golden[name]))) if np.isfinite(value)
                            else float("nan"), value, not value <= threshold) for name, value in d.nmse.items()]
    return d, components


def _timed(result: Verification, what: str, run):
    """run(), its wall time recorded in result.seconds[what] when it returns."""
    start = time.perf_counter()
    value = run()
    result.seconds[what] = time.perf_counter() - start
    return value


def _implementation(adapter: Adapter, checkpoint: LayeredCheckpoint, tokens: np.ndarray):
    """call(capability): the adapter's result on the whole params and the tokens.  A
    WorkerAdapter (`lmref verify`) runs in its worker process, which reads the params from the
    directory itself; an Adapter object runs here, on params read here (dropped with `call`)."""
    if isinstance(adapter, WorkerAdapter):
        return lambda capability: adapter.call_on_directory(capability, checkpoint.config, checkpoint.directory,
                                                            tokens)
    params = checkpoint.read_all()
    return lambda capability: getattr(adapter, capability)(checkpoint.config, params, tokens)


def _run_implementation(result: Verification, checkpoint: LayeredCheckpoint, captures: bool) -> tuple:
    """(logits, captured or None) of the adapter on the whole params."""
    call = _implementation(result.adapter, checkpoint, result.tokens)
    logits = _timed(result, "implementation forward", lambda: call("forward").value)
    if not captures:
        return logits, None
    try:
        captured = _timed(result, "implementation capture", lambda: call("capture"))
    except AdapterNotSupported as e:
        result.capture_note = f"NOT SUPPORTED: {e}"
        return logits, None
    result.capture_note = f"{len(captured)} intermediates captured"
    return logits, {name: out.value for name, out in captured.items()}


def prepare(directory: str, tokens: np.ndarray | None = None) -> tuple[LayeredCheckpoint, np.ndarray]:
    """The checkpoint in `directory` and the prompt (default `fixed_prompt`), checked: bad input
    (the directory, its config, the tokens) raises here, before any implementation is loaded."""
    checkpoint = LayeredCheckpoint(directory)
    config = checkpoint.config
    tokens = check_tokens(config, fixed_prompt(config.vocab_size) if tokens is None else tokens)
    check_supported(config, BACKEND, FEATURES)
    return checkpoint, tokens


def verify(source: str | tuple[LayeredCheckpoint, np.ndarray], adapter: Adapter, *,
           tokens: np.ndarray | None = None, captures: bool = False,
           tolerances: Tolerances | None = None) -> Verification:
    """Run `adapter` and the layered golden on the checkpoint in the directory `source` (or on
    what `prepare` gave for one) and compare them.  Bad input raises; the implementation's
    failures are recorded."""
    checkpoint, tokens = prepare(source, tokens) if isinstance(source, str) else source
    config = checkpoint.config
    row, tolerances = adapter.row(), tolerances or Tolerances()
    result = Verification(str(checkpoint.directory), config.hf_model_type, config.n_layers, adapter, row,
                          tolerances.row(row), tokens, run_overrides=tolerances.run_overrides)
    try:
        logits, captured = _run_implementation(result, checkpoint, captures)
    except (AdapterCallError, AdapterResultError, AdapterNotSupported) as e:
        result.error = str(e)
        result.error_status = {AdapterResultError: "FAIL", AdapterNotSupported: "NOT SUPPORTED"}.get(type(e), "ERROR")
        return result
    golden: dict | None = {} if captured is not None else None
    ref = _timed(result, "golden (layer by layer)", lambda: layered_forward(checkpoint, tokens, golden))
    result.logits = compare(logits, ref, result.tolerance)
    result.logits_failed = gate(result.logits, result.tolerance)
    if captured is not None:
        result.divergence, result.components = compare_captures(golden, captured, result.tolerance.nmse)
    return result
