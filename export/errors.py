"""Errors of the ONNX export and its validation.  Each message names the file, field or input
and what is wrong with it."""


class ExportError(ValueError):
    """A source the exporter cannot read (a checkpoint, a preset).  A config needing a feature
    the export lacks raises spec.features.UnsupportedFeature (export/features.py)."""


class BundleError(ValueError):
    """An exported directory that cannot be used: a missing or corrupted .onnx or external-data
    file, an unreadable export.json, or a config.json that does not match the graph."""


class ProviderError(RuntimeError):
    """onnxruntime did not run on the execution provider that was asked for (it falls back to
    the CPU silently: onnxruntime falls back without an error)."""


class GenaiError(ExportError):
    """onnxruntime-genai's generator cannot run the export asked for with --genai-eos (the
    message says why; export/genai.py)."""
