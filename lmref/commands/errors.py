"""How the commands report bad input: one line naming the problem, and an exit status."""

from __future__ import annotations

import argparse
import functools
import os
import sys

USAGE = 2  # bad input: a usage error, nothing was written
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command that Ctrl-C stopped


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


def interrupted(command: str, said: str = "") -> int:
    """Say that Ctrl-C stopped `command` (and what it leaves, `said`); exit status 130.  Under
    torchrun, which passes the Ctrl-C to every rank, only rank 0 (RANK) says it."""
    if os.environ.get("RANK", "0") == "0":
        print(f"lmref {command}: interrupted (Ctrl-C){'; ' + said if said else ''}", file=sys.stderr)
    return INTERRUPTED


def interruptible(command: str, note):
    """Decorate a command so that Ctrl-C (KeyboardInterrupt) ends it with one line saying what
    it leaves (`note`, formatted with the command's arguments, or a function of them) and exit
    status 130.  A command without one still gets the line, from lmref/cli.py."""
    def wrap(run):
        @functools.wraps(run)
        def guarded(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except KeyboardInterrupt:
                return interrupted(command, note(args) if callable(note) else note.format(**vars(args)))
        return guarded
    return wrap
