"""Every preset learns: `lmref train --arch X` (tiny X, byte tokens, the embedded corpus) for
60 steps brings the validation loss below the unigram baseline, the cross-entropy of the
validation bytes under the training split's byte frequencies (about 3.25 nats): what a model
that ignores the context reaches at best.  Before training every model sits near ln(256) =
5.5 nats, so a model whose forward or gradients were broken (a sublayer whose norm kills its
output, a softcap that flattens every logit) would stay above it.  One to 17 seconds per
preset (a mixture of 128 experts the longest), so the default run trains FAST, presets that
together have every feature of every text preset, objective terms included (the first test
checks it), and `make test-thorough` trains the rest.

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
# The cheapest presets that between them have every feature of every text preset (spec/features.py):
# learned positions, ALiBi by Press's and OLMo's rules, partial and LongRoPE, Gemma 2's softcaps
# and Gemma 3's local RoPE, per-head and per-projection QK norms, PaLM's logit z-loss, DBRX's
# clipping, OLMoE's router z-loss, Qwen-MoE's gated shared expert and Llama 4's sigmoid top-1.
FAST = ["gpt2", "mpt", "olmo", "olmo-alibi", "olmo2-7b", "bloom-560m", "phi-1.5", "phi-3-mini-128k", "palm-540b",
        "gemma2-9b", "gemma3-27b", "dbrx", "olmoe-1b-7b", "qwen1.5-moe-a2.7b", "llama4-scout"]


def test_the_default_run_trains_every_feature_of_every_text_preset():
    from lmref.spec.features import required_features

    fast = frozenset().union(*(required_features(tiny(name)) for name in FAST))
    for name in TEXT_PRESETS:
        assert required_features(tiny(name)) <= fast, (name, sorted(required_features(tiny(name)) - fast))


@pytest.mark.parametrize("arch", [a if a in FAST else pytest.param(a, marks=pytest.mark.slow) for a in TEXT_PRESETS])
def test_validation_loss_falls_below_the_unigram_baseline(arch, tmp_path):
    assert lmref("train", "--arch", arch, *RUN, "--lr", learning_rate(arch), "--out", tmp_path / "run") == 0
    baseline = records(tmp_path / "run", "run")[0]["unigram_baseline"]
    first, last = records(tmp_path / "run", "val")[0], records(tmp_path / "run", "val")[-1]
    assert first["step"] == 0 and first["val_loss"] > baseline + 1.5, first  # untrained: near ln(256)
    assert last["step"] == 60 and last["val_loss"] < baseline, (last, baseline)
