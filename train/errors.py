"""Errors of `lmref train` / `lmref generate`.  Each message names the file, flag or setting
and what is wrong with it.  A damaged checkpoint raises `convert.errors.CheckpointError`."""


class TrainError(ValueError):
    """Bad input to training or generation: a corpus that cannot be used, settings that do not
    fit together, a checkpoint of another run."""
