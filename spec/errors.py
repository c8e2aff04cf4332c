"""Errors for bad input.  Each message names the offending thing and the rule it breaks."""


class InputError(ValueError):
    """Tokens that a model cannot take: wrong dtype or shape, ids out of range, too long."""


class ParamsError(ValueError):
    """A parameter dict that does not fit the config: missing, extra or misshaped entries."""
