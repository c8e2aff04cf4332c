"""The negative controls of issue 13's knobs (tests/controls.py runs them with the others):
porting mistakes in parallel blocks, partial, interleaved rotary embeddings and LongRoPE,
BLOOM's LayerNorm after the token embedding left out, and in PaLM's head and objective, each
made through the config of the case it must fail.

The case configs (conformance/cases.py) have head_dim 16, so Pythia's and GPT-J's quarter of a
head rotates 4 dims (2 pairs); one pair short is a fraction of 0.125.
"""

from __future__ import annotations

import dataclasses

from tests.control_kinds import ConfigMistake, Control


class LongRopeFactorsSwapped(ConfigMistake):
    """Phi-3-mini-128k's short and long LongRoPE factors read the other way round (each list is
    the other's config key), whatever the case's factors are."""

    def __init__(self):
        super().__init__("longrope_factors_swapped")

    def adjust(self, config):
        s = config.rope_scaling
        return dataclasses.replace(config, rope_scaling=dataclasses.replace(
            s, short_factor=s.long_factor, long_factor=s.short_factor))

PARALLEL_CONTROLS: list[Control] = [
    Control("gptj-6b", ConfigMistake("gptj_rotary_halves", rope_layout="halves"),
            "GPT-J's rotary pairs taken as halves (rotate_half) instead of interleaved (rotate_every_two)"),
    Control("pythia-160m", ConfigMistake("neox_rotary_one_pair_short", rope_fraction=0.125),
            "Pythia's rotary width one pair short (2 of the case's 4 rotated dims)"),
    Control("pythia-160m", ConfigMistake("neox_parallel_as_sequential", parallel_residual=False),
            "GPT-NeoX's attention and MLP run one after the other instead of side by side"),
    Control("pythia-160m", ConfigMistake("neox_attn_norm_reused", shared_attn_norm=True),
            "GPT-NeoX's MLP reading the attention's LayerNorm (GPT-J's block) instead of its own second one"),
    # BLOOM's word_embeddings_layernorm loaded and never applied (its weights dropped with it).  Its
    # other new knob, the tanh GELU's sqrt(2/pi) truncated to 0.79788456, has no control: the exact
    # constant moves the logits by about 1e-10 relative, below what any float32 check resolves.
    Control("bloom-560m", ConfigMistake("bloom_embedding_norm_dropped", embedding_norm=False),
            "BLOOM without the LayerNorm after its token embedding (word_embeddings_layernorm)"),
    Control("phi-3-mini-128k", LongRopeFactorsSwapped(),
            "Phi-3-mini-128k's short and long LongRoPE factors swapped"),
    Control("palm-8b", ConfigMistake("palm_logit_scale_dropped", logit_scale=1.0),
            "PaLM's tied head without its d_model^-0.5 logit scale (a port that reads the head as any tied one)"),
    Control("palm-8b", ConfigMistake("palm_logit_z_loss_dropped", logit_z_loss_coef=0.0),
            "PaLM's training loss without its z-loss, 1e-4 log^2 Z (the cross-entropy alone)"),
]
