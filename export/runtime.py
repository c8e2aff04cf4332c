"""onnxruntime sessions on a chosen execution provider, checked to really run there, and the
decoder's step function over the graph's own KV cache.

Providers: the CPU everywhere, CUDA where `onnxruntime.get_available_providers()` lists it
(the onnxruntime-gpu package).  onnxruntime falls back to the CPU silently when the CUDA
libraries do not load (microsoft/onnxruntime#23372, commaai/openpilot#31708), so a
session is checked twice: `get_providers()` must start with the provider asked for, and
with profiling on, the compute nodes (MatMul, Softmax, ...) must have run on it
(`check_placement`; shape ops may legitimately stay on the CPU).

`DecoderSession.step` checks every input before onnxruntime sees it (the graph itself
checks nothing: a token id of -1 wraps to the last embedding row, a float id is truncated,
batch 0 kills the process with SIGFPE, a sequence past the context just runs): the tokens
with spec.inputs' rules and messages, the ones every backend gives, counting the past's
length against the context; the past (count, shapes, batch; a sliding layer of window W
holds the last min(past, W - 1) entries, export/decoder.py), the attention mask
([batch, past + seq] of 0 and 1) and explicit position ids (inside the context).  The
context's `past` is the layers' that keep every entry, or, when every layer is sliding,
the mask's length less the new tokens'.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from lmref.export.decoder import KV, graph_input_names, graph_output_names, past_names, present_names, window_pasts
from lmref.export.errors import ProviderError
from lmref.spec.config import ModelConfig
from lmref.spec.errors import InputError
from lmref.spec.inputs import check_tokens
from lmref.spec.plan import crosses_original_context

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
# onnxruntime's CUDA provider runs float32 MatMul and Gemm in TF32 (10 mantissa bits) unless told
# not to: its use_tf32 defaults to 1 (onnxruntime/core/providers/cuda/cuda_execution_provider_info.h).
# The graphs are float32, and the float32 tolerance row does not admit TF32 (conformance/TOLERANCES.md).
CUDA_OPTIONS = {"use_tf32": "0"}
# Nodes that must run on the requested provider; the rest (Shape, Gather of sizes, ...) may not.
COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Softmax", "LayerNormalization", "SimplifiedLayerNormalization",
                         "FusedMatMul", "Einsum"})


def available_providers() -> list[str]:
    """The providers to run on here: CPU, and CUDA when onnxruntime offers it."""
    import onnxruntime as ort

    return [CPU] + ([CUDA] if CUDA in ort.get_available_providers() else [])


def default_provider() -> str:
    return available_providers()[-1]


def open_session(path: str | Path | bytes, provider: str = CPU, *, profile_dir: str | Path | None = None,
                 threads: int | None = None, external: dict[str, np.ndarray] | None = None):
    """An InferenceSession of `path` (a .onnx file, or a graph's serialized bytes) on `provider`
    (session_providers: CUDA without TF32, the CPU behind it); ProviderError unless `provider`
    is the one that took the graph.  `threads`: intra-op threads (default: onnxruntime's, one
    per core).  `external`: the values of initializers that the graph keeps as external data,
    given in memory (onnxruntime's add_external_initializers: they replace the references as the
    graph loads, before any optimization, and onnxruntime copies them: tests/test_export_reopen.py)."""
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        raise ProviderError(f"{provider} is not available in this onnxruntime build "
                            f"(available: {', '.join(ort.get_available_providers())})")
    if provider == CUDA and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA / cuDNN from the nvidia-* wheels or torch (microsoft/onnxruntime#23744)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
    if external:
        options.add_external_initializers(list(external), [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                                                           for v in external.values()])
    graph = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(graph, options, providers=session_providers(provider))
    ran = session.get_providers()
    if not ran or ran[0] != provider:
        raise ProviderError(f"asked for {provider} but the session runs on {', '.join(ran)}: onnxruntime fell "
                            "back silently (microsoft/onnxruntime#23372; check the CUDA / cuDNN libraries "
                            "onnxruntime-gpu needs, and that `onnxruntime` and `onnxruntime-gpu` are not both "
                            "installed)")
    return session


def session_providers(provider: str) -> list:
    """An InferenceSession's `providers` for `provider`: CUDA in float32 (CUDA_OPTIONS) with the
    CPU behind it for the nodes CUDA has no kernel for; any other provider as it is."""
    if provider == CPU:
        return [CPU]
    return [(provider, CUDA_OPTIONS) if provider == CUDA else provider, CPU]


def node_providers(profile_path: str | Path) -> Counter:
    """Counter of (op type, provider) over the node events of an onnxruntime profile file."""
    events = json.loads(Path(profile_path).read_text())
    return Counter((e["args"]["op_name"], e["args"]["provider"]) for e in events
                   if e.get("cat") == "Node" and "provider" in e.get("args", {}))


def check_placement(placement: Counter, provider: str) -> None:
    """ProviderError when a compute node (COMPUTE_OPS) ran elsewhere than on `provider`."""
    elsewhere = sorted({f"{op} on {p}" for (op, p), n in placement.items() if op in COMPUTE_OPS and p != provider})
    if elsewhere:
        raise ProviderError(f"compute nodes did not run on {provider}: {', '.join(elsewhere)}")
    if not any(op in COMPUTE_OPS for op, _ in placement):
        raise ProviderError("the profile shows no compute node: cannot tell where the graph ran")


def end_profile(session) -> Counter:
    """Stop a profiling session; its node placement (the profile file is removed)."""
    path = session.end_profiling()
    try:
        return node_providers(path)
    finally:
        os.remove(path)


def positions_from_mask(attention_mask: np.ndarray) -> np.ndarray:
    """[B, T] int64: cumsum - 1 clipped at 0, the position ids of left-padded rows (the HF
    convention; the graph gives the padding slots' keys EMPTY_SLOT, export/decoder.py)."""
    return np.clip(np.cumsum(attention_mask, axis=-1) - 1, 0, None).astype(np.int64)


class DecoderSession:
    """The exported decoder in onnxruntime: `step` runs the graph once, `past` is fed back.
    The decoder of a config with a vision tower takes inputs_embeds: export/multimodal.py's
    MultimodalSession runs it, behind the same interface."""

    takes_embeds = False

    def __init__(self, session, config: ModelConfig):
        if (config.vision is not None) != self.takes_embeds:
            wanted = "export/multimodal.py's MultimodalSession" if config.vision else "a DecoderSession"
            raise ValueError(f"config {config.name!r} {'has a' if config.vision else 'has no'} vision tower: its "
                             f"decoder graph runs in {wanted} (export/multimodal.py open_chain opens either)")
        self.session, self.config = session, config
        self.input_names = graph_input_names(config)
        self.past_names = past_names(config.n_layers)
        self.keeps = [keep for keep in window_pasts(config) for _ in KV]  # per past array: W - 1 or None

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """The first step's past: [B, n_kv_heads, 0, head_dim] per layer and kind."""
        shape = (batch, self.config.n_kv_heads, 0, self.config.head_dim)
        return [np.zeros(shape, np.float32) for _ in self.past_names]

    def check_past(self, past: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        """(past as float32 arrays, its batch), or InputError: 2 * n_layers arrays
        [batch, n_kv_heads, length, head_dim] of one batch, the layers that keep all their
        past (window_pasts None) of one length."""
        if len(past) != len(self.past_names):
            raise InputError(f"past_key_values: expected {len(self.past_names)} arrays (key and value of "
                             f"{self.config.n_layers} layers), got {len(past)}")
        arrays, want = [], (self.config.n_kv_heads, self.config.head_dim)
        full = None  # (name, shape) of the first past of a layer that keeps all of it
        for name, value, keep in zip(self.past_names, past, self.keeps):
            a = np.asarray(value)
            if a.dtype == object or not np.issubdtype(a.dtype, np.floating):
                raise InputError(f"{name}: must be a floating-point array, got dtype {a.dtype}")
            if a.ndim != 4 or (a.shape[1], a.shape[3]) != want:
                raise InputError(f"{name}: must have shape [batch, {want[0]}, past, {want[1]}], got shape {a.shape}")
            if arrays and a.shape[0] != arrays[0].shape[0]:
                raise InputError(f"{name}: shape {a.shape} differs in batch from "
                                 f"{self.past_names[0]}'s {arrays[0].shape}")
            if keep is None and full is not None and a.shape[2] != full[1][2]:
                raise InputError(f"{name}: shape {a.shape} differs in past length from {full[0]}'s {full[1]}")
            full = (name, a.shape) if keep is None and full is None else full
            arrays.append(a.astype(np.float32, copy=False))
        return arrays, arrays[0].shape[0]

    def past_length(self, past: list[np.ndarray], attention_mask, input_ids) -> int:
        """P, the positions before this step: the length of the pasts that keep everything;
        without such a layer (every layer sliding) the mask's length less the new tokens'
        (0 when their shapes say nothing; the checks that follow name the problem)."""
        full = [a.shape[2] for a, keep in zip(past, self.keeps) if keep is None]
        if full:
            return full[0]
        mask, ids = np.shape(attention_mask), np.shape(input_ids)
        return max(mask[-1] - ids[-1], 0) if len(mask) and len(ids) else 0

    def check_window_pasts(self, past: list[np.ndarray], past_len: int) -> None:
        """InputError unless each sliding layer's past holds the last min(P, W - 1) entries
        (the graph's presents for it: export/decoder.py)."""
        for name, a, keep in zip(self.past_names, past, self.keeps):
            if keep is not None and a.shape[2] != min(past_len, keep):
                raise InputError(f"{name}: a sliding layer of window {keep + 1} keeps the last min(past, {keep}) = "
                                 f"{min(past_len, keep)} entries after {past_len} positions, got {a.shape[2]}")

    def check_inputs(self, input_ids, attention_mask, past: list[np.ndarray], position_ids=None) -> list[np.ndarray]:
        """The graph's input arrays in input_names' order, or InputError naming the problem:
        the past's arrays, then the tokens by spec.inputs' rules after the past's length,
        then the past's batch and the sliding layers' past lengths, the mask and the
        position ids (see the module docstring)."""
        past, past_batch = self.check_past(past)
        past_len = self.past_length(past, attention_mask, input_ids)
        tokens = check_tokens(self.config, input_ids, past_len=past_len)  # [B, S] int64
        batch, seq = tokens.shape
        if past_batch != batch:
            raise InputError(f"tokens have batch {batch} but the KV cache holds batch {past_batch}")
        self.check_window_pasts(past, past_len)
        mask = self.check_mask(attention_mask, batch, past_len + seq)
        if position_ids is None:
            positions = positions_from_mask(mask)[:, -seq:]  # [B, S]
        else:
            positions = self.check_positions(position_ids, tokens.shape)
        return [tokens, mask, positions.astype(np.int64), *past]

    @staticmethod
    def check_mask(attention_mask, batch: int, total: int) -> np.ndarray:
        """attention_mask as int64 [batch, total] of 0 and 1, or InputError."""
        mask = np.asarray(attention_mask)
        if mask.dtype != bool and (mask.dtype == object or not np.issubdtype(mask.dtype, np.integer)):
            raise InputError(f"attention_mask must be an integer or bool array, got dtype {mask.dtype}")
        if mask.shape != (batch, total):
            raise InputError(f"attention_mask must have shape [batch, past + seq] = [{batch}, {total}], "
                             f"got {mask.shape}")
        mask = mask.astype(np.int64)
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(f"attention_mask must hold only 0 and 1, got {mask[where]} at {where}")
        return mask

    def check_positions(self, position_ids, shape: tuple[int, int]) -> np.ndarray:
        """Explicit position_ids of the tokens' `shape`, inside the context, or InputError."""
        positions = np.asarray(position_ids)
        if positions.dtype == object or not np.issubdtype(positions.dtype, np.integer):
            raise InputError(f"position_ids must be an integer array, got dtype {positions.dtype}")
        if positions.shape != shape:
            raise InputError(f"position_ids must have the shape of the tokens {shape}, got {positions.shape}")
        if positions.min() < 0:
            where = tuple(int(i) for i in np.argwhere(positions < 0)[0])
            raise InputError(f"position id {positions[where]} at {where} is negative")
        if positions.max() >= self.config.max_seq_len:
            where = tuple(int(i) for i in np.argwhere(positions >= self.config.max_seq_len)[0])
            raise InputError(f"position id {positions[where]} at {where} is out of range for "
                             f"max_seq_len={self.config.max_seq_len}")
        return positions

    def outputs(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray],
                position_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every output of the graph by name (export/decoder.py graph_output_names: logits,
        presents, and a MoE graph's router logits and selected experts) for input_ids [B, S]
        after `past`; attention_mask [B, P + S] covers past and new tokens; position_ids
        default to positions_from_mask's last S.  Every input is checked first
        (check_inputs): InputError, and onnxruntime never runs."""
        return self.run(self.check_inputs(input_ids, attention_mask, past, position_ids))

    def run(self, values: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph by name, for checked input arrays in its inputs' order."""
        names = graph_output_names(self.config)
        return dict(zip(names, self.session.run(names, dict(zip(self.input_names, values)))))

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray],
             position_ids: np.ndarray | None = None, **inputs) -> tuple[np.ndarray, list[np.ndarray]]:
        """(logits [B, S, V], presents) of `outputs` (`inputs`: a MultimodalSession's
        pixel_values): the next step's past."""
        out = self.outputs(input_ids, attention_mask, past, position_ids, **inputs)
        return out["logits"], [out[name] for name in present_names(self.config.n_layers)]

    def prefill_and_decode(self, tokens: np.ndarray, prompt_len: int) -> np.ndarray:
        """Logits [B, S, V] of `prefill_and_decode_outputs`."""
        return self.prefill_and_decode_outputs(tokens, prompt_len)["logits"]

    def prefill_and_decode_outputs(self, tokens: np.ndarray, prompt_len: int, **prefill) -> dict[str, np.ndarray]:
        """tokens[:, :prompt_len] in one step, then one token per step through the graph's own
        cache (teacher-forced), no padding: the logits [B, S, V] of every position, and a MoE
        graph's router_logits.{i} [B, S, E] and selected_experts.{i} [B, S, k].  The tokens
        are checked first, as every backend's decode checks them (spec.inputs).  `prefill`:
        more inputs of the prefill's `outputs` (a MultimodalSession's pixel_values)."""
        tokens = check_tokens(self.config, tokens)
        batch, total = tokens.shape
        if not 1 <= prompt_len <= total:
            raise ValueError(f"prompt_len must be in [1, {total}], got {prompt_len}")
        mask, presents = np.ones((batch, total), np.int64), present_names(self.config.n_layers)
        out = self.outputs(tokens[:, :prompt_len], mask[:, :prompt_len], self.empty_past(batch), **prefill)
        steps = [out]
        for t in range(prompt_len, total):
            out = next_outputs(self, tokens[:, : t + 1], mask[:, : t + 1], [out[name] for name in presents], 1)
            steps.append(out)
        return {name: np.concatenate([s[name] for s in steps], axis=1)  # [B, S, ...]
                for name in steps[0] if name not in presents}


def crosses(config: ModelConfig, attention_mask: np.ndarray, seq: int) -> bool:
    """Whether a step of `seq` new tokens (attention_mask [B, P + S]) takes a row of a LongRoPE
    model from a past of 1..O real tokens past its original context O: its cached keys and
    values were computed with the short factors (spec/plan.py `crosses_original_context`,
    spec/MATH.md "LongRoPE")."""
    lengths = np.asarray(attention_mask).sum(axis=-1)  # [B]: each row's real tokens
    before = lengths - np.asarray(attention_mask)[:, -seq:].sum(axis=-1)
    return any(crosses_original_context(config, int(b), int(n)) for b, n in zip(before, lengths))


def next_outputs(session, ids: np.ndarray, attention_mask: np.ndarray, past: list, seq: int) -> dict:
    """`session.outputs` (a DecoderSession, or anything with its `outputs`, `empty_past` and
    `config`) of the last `seq` of the tokens so far, ids [B, T] (attention_mask [B, T]), after
    `past`; when the step `crosses` a LongRoPE model's original context, of all T tokens from an
    empty past, every output but the presents cut to the last `seq` positions (the graph cannot
    recompute a past it is given: its caller re-runs the sequence)."""
    if not crosses(session.config, attention_mask, seq):
        return session.outputs(ids[:, -seq:], attention_mask, past)
    out = session.outputs(ids, attention_mask, session.empty_past(ids.shape[0]))
    presents = set(present_names(session.config.n_layers))
    return {name: value if name in presents else value[:, -seq:] for name, value in out.items()}
