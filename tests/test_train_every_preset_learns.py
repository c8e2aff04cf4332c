"""Every preset learns: `lmref train --arch X` (tiny X, byte tokens, the embedded corpus) for
60 steps brings the validation loss below the unigram baseline, the cross-entropy of the
validation bytes under the training split's byte frequencies (about 3.25 nats): what a model
that ignores the context reaches at best.  Before training every model sits near ln(256) =
5.5 nats, so a model whose forward or gradients were broken (a sublayer whose norm kills its
output, a softcap that flattens every logit) would stay above it.  A few seconds per preset.

tests/test_train_loop.py holds the control (a learning rate of ~0 stays above the baseline)
and a tighter bound for LLaMA 3.  A preset with a vision tower trains on images instead
(train/multimodal.py): tests/test_train_llava.py holds its bound, the caption loss of the image
model clearly below its text-only baseline's.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from lmref.spec.presets import PRESETS, tiny  # noqa: E402
from tests.train_helpers import lmref, records  # noqa: E402

RUN = ["--seq-len", "64", "--batch-size", "16", "--eval-batches", "4", "--no-progress", "--steps", "60",
       "--warmup", "10", "--eval-every", "60"]


def learning_rate(arch: str) -> str:
    """1e-2; twice that for a head whose logits are scaled down (PaLM: d_model^-0.5, 1/8 at the
    tiny width).  PaLM trained with Adafactor, whose updates grow with each weight's RMS
    (Chowdhery et al. 2022, section 5); AdamW moves every weight of the tied table by about
    the learning rate, so its scaled logits move 8 times slower than an unscaled head's: at
    1e-2 tiny PaLM ends 60 steps just above the baseline (3.27 against 3.25), at 2e-2 below
    (2.97)."""
    return "2e-2" if tiny(arch).logit_scale < 1 else "1e-2"


TEXT_PRESETS = sorted(name for name, preset in PRESETS.items() if preset.vision is None)


@pytest.mark.parametrize("arch", TEXT_PRESETS)
def test_validation_loss_falls_below_the_unigram_baseline(arch, tmp_path):
    assert lmref("train", "--arch", arch, *RUN, "--lr", learning_rate(arch), "--out", tmp_path / "run") == 0
    baseline = records(tmp_path / "run", "run")[0]["unigram_baseline"]
    first, last = records(tmp_path / "run", "val")[0], records(tmp_path / "run", "val")[-1]
    assert first["step"] == 0 and first["val_loss"] > baseline + 1.5, first  # untrained: near ln(256)
    assert last["step"] == 60 and last["val_loss"] < baseline, (last, baseline)
