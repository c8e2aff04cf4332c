"""torch.onnx's dynamo export, with its registry of torchlib functions built once per process.

`torch.onnx.export(..., dynamo=True)` builds that registry (torch's table from each ATen op to
the onnxscript functions that translate it) anew on every call: 0.35 s a call warm on the
2-core CI machine (onnxscript 0.7.2 re-parses the source of 497 of them), and `pytest
conformance/ --impl onnx` alone exports 53 graphs (a decoder per arch, and each LLaVA's vision
and embed graphs).  Exporting the GPT-2 case config's decoder four times each way in one
process, alternating, took a median of 2.74 s here against 3.34 s through torch.onnx.export
(2026-12-05).  So `dynamo_export` takes the steps torch 2.13's `torch.onnx.export` takes for
lmref's arguments (torch/onnx/_internal/exporter/_compat.py `export_compat`: the example's
trailing dict as keyword arguments, the dynamic shapes' Dims made export Dims and the graph's
axes renamed after them, then `_core.export`) with one registry kept for the process.  These
are torch's private functions; torch is pinned (pyproject.toml), and
tests/test_export_dynamo.py checks that the graph is torch.onnx.export's, byte for byte.
"""

from __future__ import annotations

import functools


@functools.cache
def torchlib_registry(opset: int):
    """torch.onnx's ONNXRegistry of torchlib's functions at `opset` (>= torch's TORCHLIB_OPSET,
    as export_compat builds it for such an opset); _core.export only reads it."""
    from torch.onnx._internal.exporter import _registration

    return _registration.ONNXRegistry.from_torchlib(opset_version=opset)


def dynamo_export(module, example: tuple, *, dynamic_shapes, input_names: list[str], output_names: list[str],
                  opset: int, optimize: bool):
    """The ONNXProgram torch.onnx.export(module, example, dynamo=True, ...) gives for these
    arguments (module docstring); the caller sets no_grad and the exporter's logging."""
    from torch.onnx._internal.exporter import _compat, _constants, _core, _dynamic_shapes

    if opset < _constants.TORCHLIB_OPSET:
        raise ValueError(f"opset {opset} is below torchlib's {_constants.TORCHLIB_OPSET}: torch.onnx.export would "
                         "convert the graph's version, which dynamo_export does not")
    args, kwargs = _compat._get_torch_export_args(example, None)
    shapes, rename_axes = _dynamic_shapes.convert_str_to_export_dim(dynamic_shapes)
    program = _core.export(module, args, kwargs, registry=torchlib_registry(opset), dynamic_shapes=shapes,
                           input_names=input_names, output_names=output_names, verbose=False, optimize=optimize,
                           opset_version=opset)
    if rename_axes and dynamic_shapes is not None:
        program._rename_dynamic_axes(dynamic_shapes)
    return program
