"""Errors of `lmref train` / `lmref generate`.  Each message names the file, flag or setting
and what is wrong with it.  A damaged checkpoint raises `convert.errors.CheckpointError`."""


class TrainError(ValueError):
    """Bad input to training or generation: a corpus that cannot be used, settings that do not
    fit together, a checkpoint of another run."""


class DivergedError(TrainError):
    """Training that diverged: a loss, gradient norm or validation loss that is NaN or infinite.  The run stops
    before saving the step (the checkpoints written before it are kept, all finite);
    `lmref train` exits 1 (the run failed), not 2 (bad input)."""
