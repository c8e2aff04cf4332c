"""The JSON-lines log of a run: one object per line, every metric `lmref train` measures.

    {"kind": "run", "step": 0, ...}               settings, model size, unigram baseline (each start or resume)
    {"kind": "val", "step": 0, "val_loss": 5.6}   validation loss
    {"kind": "train", "step": 1, "loss": 5.5, "lr": ..., "grad_norm": ..., "tokens": ...,
     "tokens_per_s": ..., "epoch": ...}
    PaLM's logit z-loss adds to each "train" record, where logit_z_loss_coef weights it
     "logit_z_loss": 30.4,                        the mean of logsumexp(logits)^2 over the step's
                                                  targets (the objective adds coef x, train/loop.py)
    a mixture of experts adds to each "train" record
     "aux": 2.01,                                 the load-balancing loss (the objective adds
                                                  aux_loss_coef x aux to the loss, train/loop.py)
     "z_loss": 0.93,                              the router z-loss, where router_z_loss_coef
                                                  weights it (OLMoE; the objective adds coef x)
     "expert_load": [[0.13, ...], ...]            per MoE layer, the fraction of the step's
                                                  (token, slot) assignments each expert took

"loss" and "val_loss" are the next-token cross-entropy alone, comparable across architectures
and with the unigram baseline.

Floats are written with Python's repr, which reads back to the same bits.  A resumed run first
drops the records past its checkpoint's step (written by the interrupted process after its
last save), so the log reads like the one of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a metrics file, in order (an unfinished last line is skipped)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a killed process
    return records


class MetricsLog:
    """Appends records to RUN/metrics.jsonl, flushed line by line."""

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.path)
        self.file = open(self.path, "a" if resume_step is not None else "w")

    def __call__(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
