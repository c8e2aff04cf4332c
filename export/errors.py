"""Errors of the ONNX export and its validation.  Each message names the file, field or input
and what is wrong with it."""


class ExportError(ValueError):
    """A model the exporter refuses: a config knob the export wrapper does not compute, or a
    source (checkpoint, preset) that cannot be read."""


class BundleError(ValueError):
    """An exported directory that cannot be used: a missing or corrupted .onnx or external-data
    file, an unreadable export.json, or a config.json that does not match the graph."""


class ProviderError(RuntimeError):
    """onnxruntime did not run on the execution provider that was asked for (it falls back to
    the CPU silently: onnxruntime falls back without an error)."""
