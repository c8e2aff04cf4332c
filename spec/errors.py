"""Errors for bad input.  Each message names the offending thing and the rule it breaks."""


class InputError(ValueError):
    """Tokens that a model cannot take: wrong dtype or shape, ids out of range, too long."""


class ParamsError(ValueError):
    """A parameter dict that does not fit the config: missing, extra or misshaped entries."""


class OutputError(ValueError):
    """A place a command may not write to: an existing file, a directory holding files the
    command did not write, or one of the command's own inputs (spec/outputs.py)."""


class ResourceError(ValueError):
    """An allocation refused before it is made: it cannot fit in the memory available
    (spec/resources.py); the message gives the estimate."""
