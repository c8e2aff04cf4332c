"""The names of the captured intermediates: one contract for every backend and adapter.

`capture` (a dict handed to a forward pass) receives these activations, in computation
order, so that a mismatch can be traced to the first component that diverges:

    embed              [B, S, d_model]  the embedding output (positions added where learned)
    layers.{i}.attn    [B, S, d_model]  what layer i's attention adds to the residual stream
    layers.{i}.router  [B, S, E]        a "moe" layer's router logits, before softmax or sigmoid
    layers.{i}.mlp     [B, S, d_model]  what layer i's MLP adds
    layers.{i}.out     [B, S, d_model]  the residual stream after layer i
    final_norm         [B, S, d_model]  the final norm's output
    logits             [B, S, vocab]

A forward with images captures the image pathway's intermediates first (spec/vision.py:
`vision.embed`, `vision.layers.{i}.{attn,mlp,out}`, `vision.features`, `projector`).
"""

from __future__ import annotations

from lmref.spec.config import ModelConfig
from lmref.spec.vision import vision_capture_names

LAYER_COMPONENTS = ("attn", "mlp", "out")
MOE_LAYER_COMPONENTS = ("attn", "router", "mlp", "out")


def capture_names(config: ModelConfig, images: bool = False) -> list[str]:
    """Names of the captured intermediates of `config`, in computation order (`images`: of a
    forward that has images, whose pathway comes first)."""
    names = [*(vision_capture_names(config) if images else []), "embed"]
    for i, kind in enumerate(config.layer_mlp_kinds):
        names += [f"layers.{i}.{part}" for part in (MOE_LAYER_COMPONENTS if kind == "moe" else LAYER_COMPONENTS)]
    return names + ["final_norm", "logits"]


def moe_layers(config: ModelConfig) -> list[int]:
    """The indices of the "moe" layers, in order."""
    return [i for i, kind in enumerate(config.layer_mlp_kinds) if kind == "moe"]
