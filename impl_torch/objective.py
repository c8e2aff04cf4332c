"""The training objective, torch twin of impl_numpy.loss: the cross-entropy and its weighted
auxiliary losses, from the logits (and a mixture's router logits) of one forward.

    loss = ce + logit_z_loss_coef * logit_z_loss
              + moe.aux_loss_coef * aux + moe.router_z_loss_coef * z_loss

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


def logit_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """The mean over the rows of logits [B, T, V] of logsumexp(row)^2: a 0-d tensor in float32
    at least (impl_numpy.model.logit_z_loss)."""
    return torch.logsumexp(upcast(logits), dim=-1).square().mean()  # [B, T] -> mean over B * T


def objective(config: ModelConfig, logits: torch.Tensor, targets: torch.Tensor, routers: list[torch.Tensor]
              ) -> dict[str, torch.Tensor]:
    """{"loss", "ce"}, "logit_z_loss" where `logit_z_loss_coef` > 0 and, with "moe" layers,
    {"aux", "expert_load"} (and "z_loss"), from logits [B, T, V], their targets [B, T] and
    the router logits of the forward that made them (none without "moe" layers):

        ce            mean cross-entropy over B * T targets (float32 at least)
        logit_z_loss  the mean of logsumexp(logits)^2 over the same B * T rows (PaLM)
        aux           the load-balancing loss over the router logits (impl_torch/moe.py)
        z_loss        the router z-loss, where moe.router_z_loss_coef > 0
        loss          ce + logit_z_loss_coef * logit_z_loss + moe.aux_loss_coef * aux
                      + moe.router_z_loss_coef * z_loss: what training minimises
        expert_load   [n_moe_layers, E] fraction of each layer's assignments per expert (no grad)
    """
    ce = F.cross_entropy(upcast(logits).flatten(0, 1), targets.flatten())  # mean over B * T
    parts, loss = {"ce": ce}, ce
    if config.logit_z_loss_coef > 0:
        parts["logit_z_loss"] = logit_z_loss(logits)
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
