"""Errors of the converters.  Each message names the file, key or field and the rule it breaks."""


class ConversionError(ValueError):
    """A Hugging Face checkpoint or config that lmref cannot convert, or a `ModelConfig` that
    transformers cannot express: the message names the field or key and why."""


class CheckpointError(ValueError):
    """An lmref checkpoint directory that is missing, corrupted or of an unknown format."""
