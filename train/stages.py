"""One phase of a vision run (train/multimodal.py): a model, the parameters it trains, their
optimizer and schedule, the step and the validation, all on the caption loss.

The phases (names as the metrics log writes them):

    pretrain    the decoder alone, text only (no tower, no projector): every parameter
    baseline    the same, continued: the text-only baseline
    projector   LLaVA's stage 1, "feature alignment": the projector alone, the tower and the
                decoder frozen (the authors' scripts/v1_5/pretrain.sh, --tune_mm_mlp_adapter True)
    full        stage 2: everything that reaches the loss (the decoder, the projector and,
                unlike LLaVA-1.5, the tower: theirs is CLIP, pretrained, and stays frozen;
                this one starts random and has to learn to see)

The tower's layers after the feature layer and its post-LayerNorm never train: no output
depends on them (spec/vision.py; LLaVA reads the penultimate layer), so they get no gradient;
they are frozen (requires_grad False) rather than left without one, so that nothing (AdamW's
weight decay, DDP's reducer) touches a parameter the loss cannot see.

Each phase is its own run, with a fresh AdamW and its own warmup and cosine decay over its
steps (train/loop.py `lr_at`), as LLaVA's two stages are two runs.  The loss is the caption
loss of train/captions.py: impl_torch's objective with the vision config, which skips the
targets that are image placeholders or padding, for the text-only model too, so both are
scored on exactly the same targets.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from lmref.impl_torch import Transformer
from lmref.impl_torch.objective import objective
from lmref.spec.config import ModelConfig
from lmref.train.captions import CaptionBatch
from lmref.train.loop import adamw, lr_at
from lmref.train.settings import RunSettings

PRETRAIN, BASELINE, PROJECTOR, FULL = "pretrain", "baseline", "projector", "full"
STAGES = (PRETRAIN, BASELINE, PROJECTOR, FULL)


def unreachable(config: ModelConfig) -> tuple[str, ...]:
    """Module-name prefixes of the parameters no output depends on: the tower's layers after
    the feature layer and its post-LayerNorm (none without a tower)."""
    v = config.vision
    if v is None:
        return ()
    return (*(f"vision.layers.{i}." for i in range(v.layers_run, v.n_layers)), "vision.post_norm.")


def trains(config: ModelConfig, stage: str, name: str) -> bool:
    """Whether the parameter `name` (a module name of impl_torch's Transformer) trains in `stage`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(STAGES)}")
    if name.startswith(unreachable(config)):
        return False
    return name.startswith("projector.") if stage == PROJECTOR else True


@dataclass
class PhaseTrainer:
    """A model training one phase, on its device."""

    model: Transformer
    stage: str
    params: list[torch.nn.Parameter]  # the trained ones
    optimizer: torch.optim.AdamW
    steps: int  # the phase's steps (0: a phase that does not run)
    schedule: RunSettings  # the run's settings with the phase's steps (at least 1: lr_at's schedule)
    scoring: ModelConfig  # the vision config: its objective skips placeholder and padding targets
    images: bool  # whether the model reads the batches' images
    autocast: bool  # bfloat16 autocast of the forward
    step: int = 0  # steps done in this phase


def phase_trainer(model: Transformer, stage: str, run: RunSettings, steps: int, scoring: ModelConfig, *,
                  autocast: bool = False) -> PhaseTrainer:
    """`model` set up to train `stage` for `steps` steps: requires_grad on the parameters it
    trains only, AdamW over them (weight decay on the matrices, as train/loop.py)."""
    trained = []
    for name, param in model.named_parameters():
        param.requires_grad_(trains(model.config, stage, name))
        if param.requires_grad:
            trained.append(param)
    optimizer = adamw(trained, run, model.device)
    schedule = dataclasses.replace(run, steps=max(1, steps))
    return PhaseTrainer(model, stage, trained, optimizer, steps, schedule, scoring, model.config.vision is not None,
                        autocast)


def caption_parts(t: PhaseTrainer, batch: CaptionBatch) -> dict[str, torch.Tensor]:
    """The objective of one batch: {"loss", "ce"}, the caption loss over its scored targets."""
    device = t.model.device
    inputs = torch.from_numpy(batch.inputs).to(device)  # [B, L]
    targets = torch.from_numpy(batch.targets).to(device)  # [B, L]
    pixels = torch.from_numpy(batch.pixels).to(device) if t.images else None  # [B, C, H, W]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.autocast):
        logits = t.model(inputs, pixel_values=pixels)  # [B, L, vocab]
    return objective(t.scoring, logits, targets, [])


def train_step(t: PhaseTrainer, batch: CaptionBatch) -> dict[str, float]:
    """One optimizer step: {"loss": the batch's caption loss, "grad_norm", "lr"}."""
    lr = lr_at(t.step, t.schedule)
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    parts = caption_parts(t, batch)
    parts["loss"].backward()
    max_norm = t.schedule.clip if t.schedule.clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(t.params, max_norm)
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.step += 1
    return {"loss": parts["ce"].item(), "grad_norm": grad_norm.item(), "lr": lr}


@torch.no_grad()
def evaluate(t: PhaseTrainer, batches: list[CaptionBatch]) -> float:
    """The mean caption loss over the validation batches."""
    return sum(caption_parts(t, batch)["ce"].item() for batch in batches) / len(batches)
