"""The names of the captured intermediates: one contract for every backend and adapter.

`capture` (a dict handed to a forward pass) receives these activations, in computation
order, so that a mismatch can be traced to the first component that diverges:

    embed              [B, S, d_model]  the embedding output (positions added where learned)
    layers.{i}.attn    [B, S, d_model]  what layer i's attention adds to the residual stream
    layers.{i}.mlp     [B, S, d_model]  what layer i's MLP adds
    layers.{i}.out     [B, S, d_model]  the residual stream after layer i
    final_norm         [B, S, d_model]  the final norm's output
    logits             [B, S, vocab]
"""

from __future__ import annotations

from lmref.spec.config import ModelConfig

LAYER_COMPONENTS = ("attn", "mlp", "out")


def capture_names(config: ModelConfig) -> list[str]:
    """Names of the captured intermediates of `config`, in computation order."""
    names = ["embed"]
    for i in range(config.n_layers):
        names += [f"layers.{i}.{part}" for part in LAYER_COMPONENTS]
    return names + ["final_norm", "logits"]
