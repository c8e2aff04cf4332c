"""`validate-onnx`: the exported graph in onnxruntime against the golden and the torch twin.

The scenario is a batch of two rows with LEFT padding: row 0 has a prompt of `prompt_len`
tokens, row 1 one of `prompt_len - pad` tokens behind `pad` padding slots (attention_mask 0,
position ids cumsum(mask) - 1 clipped at 0).  The graph runs the prompt in one step from an
empty past, then `steps` single-token steps, each fed the previous step's presents as its
past (teacher-forced tokens).  The references compute each row UNPADDED on its own: the
float64 golden (impl_numpy.forward on the whole row) and the float32 torch twin
(Transformer.decode: its own static KV cache, the same prefill / step split).  Only real
positions are compared, with conformance/metrics.py and the float32 tolerance row; the
prefill and the decode steps are judged separately.  With sliding layers, the default
prompts run past the window in both rows (default_prompt_len), so the prefill's band mask
cuts keys off and every decode step runs on pasts the graph capped at W - 1 entries
(export/decoder.py); the DecoderSession refuses a past of any other length.  A mixture of
experts gets tokens whose routing cannot flip (every golden gap between the k-th and the
(k+1)-th router logit >= 0.1), and a routing check: the graph's chosen experts (its
`selected_experts.{i}` outputs) at every real position must be the golden's
(export/routing.py).  A vision tower's bundle runs its three graphs chained
(export/multimodal.py) on rows that each hold an image, and its vision graph alone against
the golden tower and projector (export/validate_vision.py).

The weights are checked directly as well (`check_weights`): every initializer of the graph
must equal, bit for bit, the same initializer of a fresh export of the reference weights
(exporter.trace: the very conversion and constant folding the export did).  The scenario
above cannot do that alone: its prompts visit a few embedding rows of the vocabulary
(a changed row 138 moved no logit it looked at), an MoE router may skip an expert, learned
positions past the scenario's length are never read, and a change below the tolerance
passes it.  Prompts that visit every embedding row would cost a vocabulary's worth of
golden positions (128k for Llama 3) and still miss the rest; the direct comparison costs one
trace, is exact, and covers every weight, the folded ones (transposed matrices, RoPE
frequencies) included.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lmref import impl_numpy
from lmref.conformance.metrics import compare, gate
from lmref.conformance.tolerances import Tolerance, Tolerances
from lmref.export.bundle import Bundle
from lmref.export.checks import Check, FeaturesCheck
from lmref.export.decoder import present_names, window_pasts
from lmref.export.multimodal import open_chain, profiled_sessions
from lmref.export.routing import RoutingCheck, check_routing, routed_rows
from lmref.export.runtime import DecoderSession, check_placement, end_profile, next_outputs
from lmref.export.validate_vision import (check_image_features, draw_pixels, has_images, image_line,
                                          image_prompt_len, pad_id, text_ids, with_images)
from lmref.spec.config import ModelConfig

DEFAULT_PAD, DEFAULT_STEPS = 3, 8
WINDOW_MARGIN = 2  # the padded row's prompt runs this many tokens past a sliding window


def default_prompt_len(config: ModelConfig, pad: int = DEFAULT_PAD) -> int:
    """11 tokens; past a RoPE scaling's original context, so that the scaling is active; and
    with sliding layers of window W, W + pad + WINDOW_MARGIN, so that both rows' prompts run
    past the window: the prefill's queries lose their earliest keys, and the sliding layers'
    presents, capped at W - 1, already drop keys before the first decode step."""
    scaling = config.rope_scaling
    original = scaling.original_max_seq_len if scaling is not None else None
    needs = [11] if original is None else [original + 1]
    needs += [keep + 1 + pad + WINDOW_MARGIN for keep in set(window_pasts(config)) - {None}]
    return max(needs + [image_prompt_len(config, pad)])  # with images: an image in each row


@dataclass(frozen=True)
class PaddedBatch:
    """Row b: `pad[b]` padding slots, its prompt, then one teacher-forced token per step."""

    prompts: list[np.ndarray]  # [len_b] real prompt tokens per row
    decode: np.ndarray  # [B, steps]
    images: tuple = ()  # a vision tower's: per row, the pixels [n_b, C, H, W] of its placeholders
    pad_id: int = 0  # the left padding's token (never attended to)

    @property
    def width(self) -> int:
        return max(len(p) for p in self.prompts)

    def input_ids(self) -> np.ndarray:
        """[B, width] prompts behind left padding (pad_id: never attended to)."""
        ids = np.full((len(self.prompts), self.width), self.pad_id, np.int64)
        for b, prompt in enumerate(self.prompts):
            ids[b, self.width - len(prompt):] = prompt
        return ids

    def attention_mask(self) -> np.ndarray:
        """[B, width]: 0 on the left padding, 1 on the prompt."""
        first_real = self.width - np.array([len(p) for p in self.prompts])  # [B]
        return (np.arange(self.width)[None, :] >= first_real[:, None]).astype(np.int64)  # [B, width]

    def row(self, b: int) -> np.ndarray:
        """[1, len_b + steps] row b unpadded: its prompt and decode tokens."""
        return np.concatenate([self.prompts[b], self.decode[b]])[None]

    def row_images(self, b: int) -> dict:
        """{"pixel_values": row b's images}, or {} for a row without."""
        return {"pixel_values": self.images[b]} if self.images and len(self.images[b]) else {}

    def batch_images(self) -> dict:
        """{"pixel_values": every row's images, row 0's first}, or {} without images."""
        images = [self.images[b] for b in range(len(self.prompts)) if self.row_images(b)]
        return {"pixel_values": np.concatenate(images)} if images else {}


def check_scenario(config: ModelConfig, prompt_len: int, pad: int, steps: int, seed: int) -> None:
    """ValueError naming the option when the scenario cannot run on `config` (`lmref
    validate-onnx` checks it before it reads the reference weights)."""
    if prompt_len < 1:
        raise ValueError(f"--prompt-len must be at least 1, got {prompt_len}")
    if not 0 <= pad < prompt_len:
        raise ValueError(f"--pad must be in [0, prompt length {prompt_len}), got {pad}")
    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    if prompt_len + steps > config.max_seq_len:
        raise ValueError(f"prompt length {prompt_len} + {steps} decode steps must fit max_seq_len {config.max_seq_len}")
    if seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")


def left_padded_batch(config: ModelConfig, prompt_len: int, pad: int, steps: int, seed: int = 0,
                      params: dict | None = None) -> PaddedBatch:
    """Row 0 a prompt of prompt_len, row 1 of prompt_len - pad, each followed by `steps`
    tokens: random, or for a mixture of experts (which needs `params`) tokens whose routing
    has a margin in the golden (export/routing.py)."""
    check_scenario(config, prompt_len, pad, steps, seed)
    lengths = [prompt_len, prompt_len - pad]
    if config.moe is not None:
        if params is None:
            raise ValueError(f"{config.name}: a mixture of experts needs the params to choose tokens whose routing "
                             "has a margin")
        rows = routed_rows(config, params, [n + steps for n in lengths], seed)  # prompt, then decode tokens
        return PaddedBatch([row[:n] for row, n in zip(rows, lengths)],
                           np.stack([row[n:] for row, n in zip(rows, lengths)]), pad_id=pad_id(config))
    rng = np.random.default_rng(seed)
    prompts = [text_ids(config, rng, n) for n in lengths]
    batch = PaddedBatch(prompts, text_ids(config, rng, (2, steps)))
    return with_images(config, batch, seed) if has_images(config) else batch


def window_line(config: ModelConfig, prompt_len: int, pad: int) -> str:
    """What the scenario does to the sliding layers: the prompts against the window, the
    pasts the graph keeps for them (export/decoder.py window_pasts)."""
    keeps = sorted({keep for keep in window_pasts(config) if keep is not None})
    if not keeps:
        return "no sliding layer: every layer's past keeps every position"
    layers = [i for i, keep in enumerate(window_pasts(config)) if keep is not None]
    return (f"sliding layers {layers}, window {keeps[0] + 1}: prompts of {prompt_len} and {prompt_len - pad} tokens "
            f"({'past' if prompt_len - pad > keeps[0] + 1 else 'NOT past'} the window); their pasts keep the last "
            f"{keeps[0]} positions")


def graph_rows(session: DecoderSession, batch: PaddedBatch) -> dict[str, list[np.ndarray]]:
    """Per output of the graph but the presents (the logits, and a MoE graph's router logits and
    selected experts), per row, [len_b + steps, ...] of its real positions: the prefill from
    an empty past, then each step on the presents of the step before (`session.outputs`)."""
    presents = present_names(session.config.n_layers)
    mask = batch.attention_mask()
    prefill = session.outputs(batch.input_ids(), mask, session.empty_past(len(batch.prompts)), **batch.batch_images())
    steps, out = [], prefill
    for t in range(batch.decode.shape[1]):
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), np.int64)], axis=1)  # [B, T + 1]
        ids = np.concatenate([batch.input_ids(), batch.decode[:, : t + 1]], axis=1)  # [B, T + 1]
        out = next_outputs(session, ids, mask, [out[name] for name in presents], 1)
        steps.append(out)
    return {name: [np.concatenate([prefill[name][b, batch.width - len(p):], *(step[name][b] for step in steps)])
                   for b, p in enumerate(batch.prompts)]
            for name in prefill if name not in presents}


def run_graph(session: DecoderSession, batch: PaddedBatch) -> list[np.ndarray]:
    """Per row, logits [len_b + steps, V] of its real positions (graph_rows)."""
    return graph_rows(session, batch)["logits"]


def golden_rows(config: ModelConfig, params: dict, batch: PaddedBatch, captures: list[dict] | None = None
                ) -> list[np.ndarray]:
    """The float64 golden on each row alone, its prompt then one step per token (decode equals
    a prefill of each prefix: spec/MATH.md "Decode"): [len_b + steps, V] per row; `captures`,
    when given, receives each row's captured intermediates (impl_numpy's capture, of a prefill
    of the whole row)."""
    rows = []
    for b, prompt in enumerate(batch.prompts):
        rows.append(impl_numpy.decode(config, params, batch.row(b), len(prompt), **batch.row_images(b))[0])
        if captures is not None:
            captured: dict = {}
            impl_numpy.forward(config, params, batch.row(b), capture=captured, **batch.row_images(b))
            captures.append(captured)
    return rows


def torch_rows(config: ModelConfig, params: dict, batch: PaddedBatch) -> list[np.ndarray]:
    """The float32 torch twin on each row alone, prefill then its own KV cache."""
    from lmref.impl_torch import Transformer

    model = Transformer.from_canonical(config, params).eval()
    return [model.decode(batch.row(b), len(p), **batch.row_images(b))[0].numpy() for b, p in enumerate(batch.prompts)]


def _stack(rows: list[np.ndarray], lengths: list[int], decode: bool) -> np.ndarray:
    """The prompt positions (or the decode positions) of every row, as one [1, N, V] array."""
    pieces = [r[n:] if decode else r[:n] for r, n in zip(rows, lengths)]
    return np.concatenate(pieces)[None].astype(np.float64)  # [1, N, V]


def _phases(out: list[np.ndarray], ref: list[np.ndarray], batch: PaddedBatch) -> dict[str, tuple]:
    """{"prefill": (out, ref), "decode (N steps)": (out, ref)} over the real positions."""
    lengths = [len(p) for p in batch.prompts]
    return {phase: (_stack(out, lengths, decode), _stack(ref, lengths, decode))
            for phase, decode in (("prefill", False), (f"decode ({batch.decode.shape[1]} steps)", True))}


def compare_rows(provider: str, reference: str, out: list[np.ndarray], ref: list[np.ndarray],
                 batch: PaddedBatch, tol: Tolerance) -> list[Check]:
    """The prefill and the decode Check of the graph's rows `out` against a reference's."""
    checks = []
    for phase, (o, r) in _phases(out, ref, batch).items():
        m = compare(o, r, tol)
        checks.append(Check(provider, reference, phase, m, gate(m, tol)))
    return checks


def validate(bundle: Bundle, params: dict, providers: list[str], *, prompt_len: int | None = None,
             pad: int = DEFAULT_PAD, steps: int = DEFAULT_STEPS, seed: int = 0,
             log: Callable[[str], None] = print) -> list[Check | RoutingCheck | FeaturesCheck]:
    """Run the scenario on each provider; log and return every Check (per provider: prefill and
    decode against the golden, then against torch; a MoE graph's RoutingCheck; a vision tower's
    FeaturesChecks of its vision graph alone)."""
    import onnxruntime as ort

    config = bundle.config
    prompt_len = default_prompt_len(config, pad) if prompt_len is None else prompt_len
    batch = left_padded_batch(config, prompt_len, pad, steps, seed, params)
    tol = Tolerances().row("float32")
    log(f"validate-onnx {bundle.root}: {config.name}, opset {bundle.manifest['opset']}, batch 2 (row 1 left-padded "
        f"by {pad}), prompt {prompt_len}, {steps} decode steps; onnxruntime {ort.__version__}")
    log("metric indices [0, n, v]: n runs over the real positions of row 0, then of row 1")
    log(window_line(config, prompt_len, pad))
    if config.vision is not None:
        log(image_line(config))
    pixels = batch.batch_images().get("pixel_values")
    if config.vision is not None and pixels is None:  # text-only rows: the vision graph on images of its own
        pixels = draw_pixels(config, np.random.default_rng([seed, 14]), 2)
    captures: list[dict] = []
    golden = "golden (float64, rows unpadded)"
    references = {golden: golden_rows(config, params, batch, captures),
                  "torch (float32, rows unpadded)": torch_rows(config, params, batch)}
    checks = []
    for provider in providers:
        with tempfile.TemporaryDirectory() as profile_dir:
            chain = open_chain(bundle, provider, profile_dir=profile_dir)
            rows = graph_rows(chain, batch)
            features = [] if pixels is None else check_image_features(provider, chain, config, params, pixels, tol)
            placement = sum((end_profile(s) for s in profiled_sessions(chain)), Counter())
        check_placement(placement, provider)
        per_provider = Counter(provider for (_, provider) in placement.elements())
        nodes = ", ".join(f"{p} {n}" for p, n in sorted(per_provider.items()))
        log(f"{provider}: session providers {chain.session.get_providers()}; node runs by provider: {nodes}")
        provider_checks = [check for reference, ref in references.items()
                           for check in compare_rows(provider, reference, rows["logits"], ref, batch, tol)]
        if config.moe is not None:
            provider_checks.append(check_routing(provider, golden, config, rows, captures))
        provider_checks += features
        for check in provider_checks:
            log(check.line())
        checks += provider_checks
    return checks


@dataclass(frozen=True)
class WeightsCheck:
    """The graph's initializers against a fresh export of the reference weights: `compared`
    initializers, `differences` one line each (empty: PASS)."""

    compared: int
    differences: list[str]
    note: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.differences)

    def line(self) -> str:
        if not self.failed:
            return (f"  PASS weights: the graph's {self.compared} initializers equal those of a fresh export of the "
                    f"reference weights, bit for bit{self.note}")
        shown = self.differences[:MAX_SHOWN]
        more = len(self.differences) - len(shown)
        return (f"  FAIL weights: the graph's initializers are not those of a fresh export of the reference weights"
                f"{self.note}: " + "; ".join(shown) + (f"; and {more} more" if more else ""))


MAX_SHOWN = 4  # differing initializers named on the FAIL line


def _canonical_names(params: dict) -> dict[tuple, str]:
    """(shape, bytes) of each canonical param as exported (float32), and of its transpose,
    -> its canonical name: to say which weight a folded initializer (val_55) holds."""
    names = {}
    for name, value in params.items():
        a = np.asarray(value, np.float32)
        for v in (a, a.T):
            names.setdefault((v.shape, np.ascontiguousarray(v).tobytes()), name)
    return names


def _fmt(x) -> str:
    return f"{x:.6g}" if isinstance(x, (float, np.floating)) else str(x)


def _difference(name: str, graph: np.ndarray, reference: np.ndarray, canonical: dict) -> str:
    """One line: how the graph's initializer `name` differs from the reference's."""
    label = name
    key = (reference.shape, np.ascontiguousarray(reference).tobytes())
    if key in canonical:
        label = f"{name} ({canonical[key]})"
    if graph.shape != reference.shape or graph.dtype != reference.dtype:
        return f"{label}: {graph.dtype}{list(graph.shape)} in the graph, {reference.dtype}{list(reference.shape)} in the reference"
    differ = graph != reference
    if np.issubdtype(graph.dtype, np.floating):
        differ &= ~(np.isnan(graph) & np.isnan(reference))
    if not differ.any():
        return f"{label}: the bytes differ (signs of zero or NaN payloads), the values do not"
    first = tuple(int(i) for i in np.argwhere(differ)[0]) if differ.ndim else ()
    return (f"{label}: {int(differ.sum())} of {differ.size} entries differ, first at {list(first)}: "
            f"{_fmt(graph[first])} in the graph, {_fmt(reference[first])} in the reference")


def check_weights(bundle: Bundle, params: dict) -> WeightsCheck:
    """Every initializer of each of the bundle's graphs against a fresh export of `params`
    (see the module docstring); with several graphs (a vision tower's) each difference names
    its graph's file.  A bundle exported with onnxruntime's contrib ops (export.json
    "ort_contrib") is compared with a fresh export with them."""
    from lmref.export.exporter import trace

    programs = trace(bundle.config, params, ort_contrib="ort_contrib" in bundle.manifest)
    compared, differences, notes = 0, [], []
    for role, program in programs.items():
        path = bundle.graph_path(role)
        count, found, note = _graph_differences(bundle, path, program, _canonical_names(params))
        compared += count
        differences += [f"{path.name}: {d}" if len(programs) > 1 else d for d in found]
        notes.append(note)
    return WeightsCheck(compared, differences, next((note for note in notes if note), ""))


def _graph_differences(bundle: Bundle, path, program, canonical: dict) -> tuple[int, list[str], str]:
    """(initializers compared, differences, note) of the graph at `path` against `program`'s:
    by name; by content when the names differ (another torch or onnxscript names the folded
    initializers otherwise)."""
    import onnx
    from onnx import numpy_helper

    from lmref.export.exporter import tool_versions

    model = onnx.load(str(path))  # with its external data
    graph = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    reference = {name: v.const_value.numpy() for name, v in program.model.graph.initializers.items()}
    if set(graph) == set(reference):
        differences = [_difference(name, graph[name], reference[name], canonical) for name in graph
                       if graph[name].dtype != reference[name].dtype or graph[name].shape != reference[name].shape
                       or graph[name].tobytes() != reference[name].tobytes()]
        return len(graph), differences, ""
    # Other names: compare the multisets of (dtype, shape, bytes).
    recorded, running = bundle.manifest.get("versions", {}), tool_versions()
    changed = [f"{k} {recorded.get(k)} (now {v})" for k, v in running.items() if recorded.get(k) != v]
    note = (" (matched by content: the initializer names differ from this export's"
            + (f"; exported with {', '.join(changed)}" if changed else "") + ")")

    def key(a: np.ndarray) -> tuple:
        return (str(a.dtype), a.shape, np.ascontiguousarray(a).tobytes())

    unmatched = {}
    for name, a in reference.items():
        unmatched.setdefault(key(a), []).append(name)
    differences = []
    for name, a in graph.items():
        names = unmatched.get(key(a))
        if names:
            names.pop()
        else:
            differences.append(f"{name}: no initializer of the reference export holds its {a.dtype}"
                               f"{list(a.shape)} values")
    differences += [f"{name}: the reference export's initializer is missing from the graph"
                    for names in unmatched.values() for name in names]
    return len(graph), differences, note
