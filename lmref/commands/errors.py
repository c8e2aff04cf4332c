"""How the commands report bad input: one line naming the problem, and an exit status."""

from __future__ import annotations

import sys

USAGE = 2  # bad input: a usage error, nothing was written


def fail(command: str, error: Exception, status: int = USAGE) -> int:
    print(f"lmref {command}: error: {error}", file=sys.stderr)
    return status


def known_errors() -> tuple[type[Exception], ...]:
    """The errors that mean bad input (a message for the user, not a traceback).  Imported on
    use: the ONNX ones need nothing heavy, but nothing here may import torch."""
    from lmref.convert.errors import CheckpointError, ConversionError
    from lmref.export.errors import BundleError, ExportError
    from lmref.spec.config import ConfigError
    from lmref.spec.errors import InputError, OutputError, ParamsError, ResourceError
    from lmref.spec.features import UnsupportedFeature
    from lmref.train.errors import TrainError

    return (TrainError, CheckpointError, ConversionError, ConfigError, InputError, ParamsError, UnsupportedFeature,
            ExportError, BundleError, OutputError, ResourceError)
