"""Cached exports for the tests: one trace per model, weights and example in a test process.

The ONNX export's cost is the trace (export/exporter.py `_exported`: torch.export, then its
decompositions), 2 to 5 s for a tiny model on 2 cores.  Many test modules export the same
model (the tiny LLaMA 3 fifteen times in one run), and `lmref validate-onnx` traces a fresh
reference export of the bundle's weights each time it runs.  `remembered_traces` keeps a copy
of each trace's ONNX model (`_copy`) and its ExportedProgram (export/reweight.py reads its
signature and constants; nothing writes to it); a trace of the same key gives a new
ONNXProgram over a fresh copy of that model, since every caller edits its program (stamping,
the optimizer, the contrib rewrite, the metadata).  The files written from a copy are byte
for byte those of a new trace (checked on llama3 with and without --ort-contrib,
llava-1.5-7b's three graphs and gemma3-4b).

The key holds what the trace reads: every submodule's class and attributes (the config, the
layer plans, the kernel choices), its parameters and buffers and any tensor attribute bit for
bit, the example inputs bit for bit, the dynamic shapes, the input and output names and
`optimize`.  It leaves out the code: a test that patches the model's code must not export
through this cache (none does; tools/mutation runs each mutant in a process of its own).

That a trace is deterministic is checked on its own: tests/test_export_dynamo.py traces the
same decoders twice, through export/dynamo.py and through torch.onnx.export, and compares the
graphs byte for byte.  Measured on 2 cores, 2026-12-06: 135 traces in the export tests, 116
of their 500 CPU-seconds repeats of an earlier key.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib

import numpy as np

MAX_CACHED_BYTES = 64 << 20  # a model of more weights is traced every time


def _digest(value, h) -> None:
    """Feed `value` into the hash `h`: arrays and tensors by dtype, shape and bytes, containers item
    by item, anything else by its repr."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        h.update(f"tensor {value.dtype} {tuple(value.shape)}".encode())
        h.update(value.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(f"array {value.dtype} {value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for k in value:
            h.update(f"key {k!r}".encode())
            _digest(value[k], h)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__} {len(value)}".encode())
        for item in value:
            _digest(item, h)
    else:
        h.update(repr(value).encode())


def trace_key(spec, optimize: bool) -> str:
    """The sha256 of what the trace of a vision_graphs.GraphSpec reads (module docstring)."""
    h = hashlib.sha256()
    for name, module in spec.module.named_modules():
        h.update(f"module {name} {type(module).__module__}.{type(module).__qualname__}".encode())
        attributes = {k: v for k, v in vars(module).items() if k not in ("_modules", "_parameters", "_buffers")
                      and not k.endswith("hooks")}
        _digest(attributes, h)
        _digest(dict(module.named_parameters(recurse=False)), h)
        _digest(dict(module.named_buffers(recurse=False)), h)
    _digest([spec.example, spec.dynamic_shapes, spec.input_names, spec.output_names, optimize], h)
    return h.hexdigest()


def _copy(model):
    """A copy of an onnx_ir Model that its users may edit: new graph, nodes and values over the same
    tensors (nothing edits a tensor in place), and the graph's naming counters as they were, so that
    the values a rewrite adds get the names they get in the original (onnx_ir's private
    `_name_authority`: where an onnx_ir lacks it, nothing is cached)."""
    clone = model.clone()
    clone.graph._name_authority = copy.deepcopy(model.graph._name_authority)
    return clone


@contextlib.contextmanager
def remembered_traces(exporter):
    """The `exporter` module's (export/exporter.py) `_exported` through a cache of traces, until exit."""
    from torch.onnx import ONNXProgram

    trace = exporter._exported
    traces: dict[str, tuple[object, object]] = {}

    def remembered(spec, optimize: bool):
        key = trace_key(spec, optimize)
        if key in traces:
            model, exported_program = traces[key]
            return ONNXProgram(_copy(model), exported_program)
        program = trace(spec, optimize)
        weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values() if v.const_value)
        if weights <= MAX_CACHED_BYTES and hasattr(program.model.graph, "_name_authority"):
            traces[key] = _copy(program.model), program.exported_program
        return program

    exporter._exported = remembered
    try:
        yield traces
    finally:
        exporter._exported = trace
