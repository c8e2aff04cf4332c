"""Where lmref's writers may write: spec/outputs.py's rule, for the converters and training.

`claim(out, kind, ...)` (spec/outputs.py) creates and marks an output directory; it takes a
directory only when it is new, empty, or already marked as `kind`'s, and never one of the
command's inputs.  `check_output` (spec/outputs.py too) raises what `claim` would raise
*without creating or marking anything*, so a command checks its output first, does the
work (which may still fail: a bad input, a refused config), and claims the directory only
when it is about to write: a command that fails leaves no empty directory behind.

The kinds of output in this part of lmref:

    lmref-checkpoint    convert.save_checkpoint (`lmref convert` writing an lmref checkpoint)
    hf-model            convert.to_hf (`lmref convert` writing a Hugging Face model directory)
    train-run           an `lmref train` run directory
"""

from __future__ import annotations

from lmref.spec.outputs import check_output, claim

CHECKPOINT_KIND = "lmref-checkpoint"
HF_KIND = "hf-model"
TRAIN_RUN_KIND = "train-run"

__all__ = ["CHECKPOINT_KIND", "HF_KIND", "TRAIN_RUN_KIND", "check_output", "claim"]
