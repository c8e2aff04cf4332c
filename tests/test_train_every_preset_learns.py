"""Every preset learns: `lmref train --arch X` (tiny X, byte tokens, the embedded corpus) for
60 steps brings the validation loss below the unigram baseline, the cross-entropy of the
validation bytes under the training split's byte frequencies (about 3.25 nats): what a model
that ignores the context reaches at best.  Before training every model sits near ln(256) =
5.5 nats, so a model whose forward or gradients were broken (a sublayer whose norm kills its
output, a softcap that flattens every logit) would stay above it.  A few seconds per preset.

tests/test_train_loop.py holds the control (a learning rate of ~0 stays above the baseline)
and a tighter bound for LLaMA 3.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from lmref.spec.presets import PRESETS  # noqa: E402
from tests.train_helpers import lmref, records  # noqa: E402

RUN = ["--seq-len", "64", "--batch-size", "16", "--eval-batches", "4", "--no-progress", "--steps", "60",
       "--warmup", "10", "--lr", "1e-2", "--eval-every", "60"]


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_validation_loss_falls_below_the_unigram_baseline(arch, tmp_path):
    assert lmref("train", "--arch", arch, *RUN, "--out", tmp_path / "run") == 0
    baseline = records(tmp_path / "run", "run")[0]["unigram_baseline"]
    first, last = records(tmp_path / "run", "val")[0], records(tmp_path / "run", "val")[-1]
    assert first["step"] == 0 and first["val_loss"] > baseline + 1.5, first  # untrained: near ln(256)
    assert last["step"] == 60 and last["val_loss"] < baseline, (last, baseline)
