"""The training objective, torch twin of impl_numpy.loss: the cross-entropy and its weighted
auxiliary losses, from the logits (and a mixture's router logits) of one forward.

    loss = ce + logit_z_loss_coef * logit_z_loss
              + moe.aux_loss_coef * aux + moe.router_z_loss_coef * z_loss

The targets are every next token but the image placeholders (`scored_targets`): LLaVA labels
the image's positions IGNORE_INDEX = -100 (the authors' llava/constants.py; llava/model/
llava_arch.py `prepare_inputs_labels_for_multimodal` fills the image features' labels with
it), which is also F.cross_entropy's default `ignore_index`.

The logit z-loss is PaLM's (Chowdhery et al. 2022, section 5: `1e-4 * log^2 Z`, Z the
softmax normaliser), per target row and averaged like the cross-entropy, as Google's t5x
computes it (t5x/losses.py `cross_entropy_with_logits`); the mixture's losses are in
impl_torch/moe.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmref.impl_torch.moe import expert_load, load_balancing_loss, router_z_loss
from lmref.impl_torch.norms import upcast
from lmref.spec.config import ModelConfig

IGNORE_INDEX = -100  # LLaVA's label of the image positions; F.cross_entropy skips it by default


def scored_targets(config: ModelConfig, targets: torch.Tensor) -> torch.Tensor | None:
    """[B, T] bool: the targets the loss scores, all but the image placeholders; None for a
    model without a vision tower (every target)."""
    return None if config.vision is None else targets != config.vision.image_token_id


def logit_z_loss(logits: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over the rows of logits [B, T, V] (the `scored` ones [B, T] where given) of
    logsumexp(row)^2: a 0-d tensor in float32 at least (impl_numpy.model.logit_z_loss)."""
    z = torch.logsumexp(upcast(logits), dim=-1).square()  # [B, T]
    return z.mean() if scored is None else z.masked_fill(~scored, 0).sum() / scored.sum()


def objective(config: ModelConfig, logits: torch.Tensor, targets: torch.Tensor, routers: list[torch.Tensor]
              ) -> dict[str, torch.Tensor]:
    """{"loss", "ce"}, "logit_z_loss" where `logit_z_loss_coef` > 0 and, with "moe" layers,
    {"aux", "expert_load"} (and "z_loss"), from logits [B, T, V], their targets [B, T] and
    the router logits of the forward that made them (none without "moe" layers):

        ce            mean cross-entropy over the B * T targets but the image placeholders
                      (float32 at least)
        logit_z_loss  the mean of logsumexp(logits)^2 over the same rows (PaLM)
        aux           the load-balancing loss over the router logits (impl_torch/moe.py)
        z_loss        the router z-loss, where moe.router_z_loss_coef > 0
        loss          ce + logit_z_loss_coef * logit_z_loss + moe.aux_loss_coef * aux
                      + moe.router_z_loss_coef * z_loss: what training minimises
        expert_load   [n_moe_layers, E] fraction of each layer's assignments per expert (no grad)
    """
    scored = scored_targets(config, targets)
    labels = targets if scored is None else targets.masked_fill(~scored, IGNORE_INDEX)  # [B, T]
    ce = F.cross_entropy(upcast(logits).flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)  # mean, scored
    parts, loss = {"ce": ce}, ce
    if config.logit_z_loss_coef > 0:
        parts["logit_z_loss"] = logit_z_loss(logits, scored)
        loss = loss + config.logit_z_loss_coef * parts["logit_z_loss"]
    if not routers:
        return {"loss": loss, **parts}
    m = config.moe
    parts["aux"] = load_balancing_loss(config, routers)
    loss = loss + m.aux_loss_coef * parts["aux"]
    if m.router_z_loss_coef > 0:
        parts["z_loss"] = router_z_loss(config, routers)
        loss = loss + m.router_z_loss_coef * parts["z_loss"]
    return {"loss": loss, **parts, "expert_load": expert_load(config, routers)}
