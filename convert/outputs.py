"""Where lmref's writers may write: spec/outputs.py's rule, for the converters and training.

`claim(out, kind, ...)` (spec/outputs.py) creates and marks an output directory; it takes a
directory only when it is new, empty, or already marked as `kind`'s, and never one of the
command's inputs.  `check_output` here raises what `claim` would raise *without creating or
marking anything*, so a command checks its output first, does the work (which may still fail:
a bad input, a refused config), and claims the directory only when it is about to write: a
command that fails leaves no empty directory behind.

The kinds of output in this part of lmref:

    lmref-checkpoint    convert.save_checkpoint (`lmref convert` writing an lmref checkpoint)
    hf-model            convert.to_hf (`lmref convert` writing a Hugging Face model directory)
    train-run           an `lmref train` run directory
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from lmref.spec.errors import OutputError
from lmref.spec.outputs import check_not_an_input, claim, marker_kind

CHECKPOINT_KIND = "lmref-checkpoint"
HF_KIND = "hf-model"
TRAIN_RUN_KIND = "train-run"

__all__ = ["CHECKPOINT_KIND", "HF_KIND", "TRAIN_RUN_KIND", "check_output", "claim", "describe"]


def describe(entries: list[Path]) -> str:
    """The first few names of a directory's entries, as `claim` lists them."""
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in entries)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_output(out: str | Path, kind: str, *, inputs: Iterable[str | Path] = (), option: str = "--out") -> Path:
    """OutputError when `claim(out, kind, inputs=inputs)` would refuse `out`; nothing is written."""
    out = Path(out)
    check_not_an_input(out, [i for i in inputs if i is not None], option)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out}: is a file, not a directory")
    if out.is_dir():
        entries = list(out.iterdir())
        found = marker_kind(out)
        if entries and found != kind:
            whose = f"written by `{found}`" if found else "not written by this command"
            raise OutputError(f"{option} {out}: the directory is not empty and {whose} "
                              f"(it holds {describe(entries)}); give a new or empty directory")
    return out
