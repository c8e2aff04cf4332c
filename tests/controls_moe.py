"""Negative controls for mixtures of experts (issue 12): the mistakes ports of Mixtral, DBRX,
Qwen-MoE and OLMoE really make, each of which must FAIL its arch's suite (tests/controls.py
lists them with the others; tests/test_controls.py runs them)."""

from __future__ import annotations

import dataclasses

import numpy as np

import lmref.impl_numpy.moe
from tests.control_kinds import Control, Float32Golden, PatchMistake, kept_params


class MoEMistake(Float32Golden):
    """A misread `moe` hyperparameter (e.g. the class default where the checkpoint sets its own)."""

    def __init__(self, name: str, **changes):
        self.name, self.changes = name, changes

    def adjust(self, config):
        return dataclasses.replace(config, moe=dataclasses.replace(config.moe, **self.changes))

    def params_for(self, config, params):
        return kept_params(self.adjust(config), super().params_for(config, params))


class ExpertsPermuted(Float32Golden):
    """A converter that stacks the experts in the wrong order (expert e gets e + 1's weights):
    the router still chooses right, the experts it reaches are the wrong ones."""

    name = "experts_permuted"

    def params_for(self, config, params):
        return {k: np.roll(v, -1, axis=0) if ".mlp.experts." in k else v  # [E, ...]: e reads e + 1
                for k, v in super().params_for(config, params).items()}


def _topk_before_softmax(config, z):
    """Top-k of the logits, then a softmax over those k only: equal to Mixtral's routing (softmax,
    top-k, renormalise), wrong for a model that does not renormalise (Qwen1.5-MoE, OLMoE)."""
    k = config.moe.n_experts_per_token
    experts = lmref.impl_numpy.moe.top_k(z, k)
    return experts, lmref.impl_numpy.moe.softmax(np.take_along_axis(z, experts, axis=-1))


MOE_CONTROLS: list[Control] = [
    Control("qwen1.5-moe-a2.7b", PatchMistake("moe_topk_before_softmax", lmref.impl_numpy.moe, "route",
                                              _topk_before_softmax),
            "Qwen1.5-MoE routed top-k first, softmax over the k after (its weights are not renormalised)"),
    Control("mixtral-8x7b", MoEMistake("moe_not_renormalised", renormalize=False),
            "Mixtral's top-2 softmax weights not renormalised to sum to 1"),
    Control("olmoe-1b-7b", MoEMistake("moe_renormalised", renormalize=True),
            "OLMoE's top-8 weights renormalised (norm_topk_prob is false)"),
    Control("dbrx", ExpertsPermuted(), "DBRX's experts stacked in the wrong order (expert e reads e + 1)"),
    Control("qwen1.5-moe-a2.7b", MoEMistake("moe_shared_gate_dropped", shared_expert_gate=False),
            "Qwen1.5-MoE's shared expert added without its sigmoid gate"),
    Control("llama4-scout", MoEMistake("llama4_router_scales_output", router_scales_input=False),
            "Llama 4's router weight applied to the expert's output, as in Mixtral, not to its input"),
    Control("mixtral-8x7b", MoEMistake("moe_aux_coef_class_default", aux_loss_coef=0.001),
            "Mixtral's load-balancing loss weighted by the class default 0.001 instead of the checkpoint's 0.02"),
    Control("dbrx", MoEMistake("moe_aux_loss_pooled", aux_loss="pooled"),
            "DBRX's load-balancing loss pooled over the layers (transformers') instead of MegaBlocks' per-layer mean"),
    Control("olmoe-1b-7b", MoEMistake("moe_router_z_loss_dropped", router_z_loss_coef=0.0),
            "OLMoE trained without its router z-loss (transformers' OlmoeForCausalLM has none)"),
]
