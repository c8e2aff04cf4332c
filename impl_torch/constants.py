"""The tensors a forward pass reads that the config alone determines: ALiBi's slopes and
LongRoPE's short and long factors, one per head or per rotated pair.

`ConfigTensors(config)` builds them once, in float64 (the Python floats of spec, exactly), as
plain tensor attributes of a module: not parameters (nothing trains them, from_canonical
never fills them) and not buffers (`.to(torch.bfloat16)` would round a buffer, and the slopes
and factors are used in float32 at least; the state dict holds the parameters alone).
Forward casts each to the device and dtype it computes in (`get`); a float64 tensor rounded
to float32 is the value `torch.tensor(floats, dtype=torch.float32)` would give.

torch.export lifts each as a constant named by its attribute path
(`model.constants.alibi_slopes`), which is how export/reweight.py tells them from a tensor
that could hold a copy of a weight.
"""

from __future__ import annotations

import torch
from torch import nn

from lmref.impl_torch.alibi import alibi_slopes
from lmref.spec.config import ModelConfig
from lmref.spec.plan import Rope, distinct_ropes, layer_plan


class ConfigTensors(nn.Module):
    """`alibi_slopes` [n_heads] where a layer adds ALiBi; `rope{i}_short_factor` and
    `rope{i}_long_factor` [rotary_dim / 2] for the i-th distinct Rope (spec/plan.py
    `distinct_ropes`) with LongRoPE scaling."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.names: tuple[str, ...] = ()
        if any(plan.alibi for plan in layer_plan(config)):
            self._hold("alibi_slopes", alibi_slopes(config.n_heads, config.alibi_max_bias, config.alibi_slopes))
        self._rope_index = {rope: i for i, rope in enumerate(distinct_ropes(config))}
        for rope, i in self._rope_index.items():
            if rope.scaling is not None and rope.scaling.kind == "longrope":
                self._hold(f"rope{i}_short_factor", rope.scaling.short_factor)
                self._hold(f"rope{i}_long_factor", rope.scaling.long_factor)

    def _hold(self, name: str, values) -> None:
        setattr(self, name, torch.tensor(values, dtype=torch.float64))
        self.names += (name,)

    def get(self, name: str, device, dtype: torch.dtype) -> torch.Tensor:
        """The tensor `name` on `device` in `dtype`."""
        return getattr(self, name).to(device=device, dtype=dtype)

    def longrope_factors(self, rope: Rope, device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(short, long) factors [rotary_dim / 2] of `rope`, a LongRoPE of the config."""
        i = self._rope_index[rope]
        return self.get(f"rope{i}_short_factor", device, dtype), self.get(f"rope{i}_long_factor", device, dtype)
