"""Moving a live run's state in and out of checkpoint tensors: canonical params, the AdamW
state (torch.distributed.checkpoint's full, name-keyed state dicts, which read the same for a
plain module, DDP and FSDP), and torch's RNG states."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from lmref.impl_torch import Transformer
from lmref.train.distributed import Dist

# Full (unsharded) state on rank 0's CPU; the other ranks take part in the gathering.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)


def canonical_params(model: nn.Module, core: Transformer, fsdp: bool, d: Dist) -> dict[str, np.ndarray] | None:
    """The canonical params on rank 0 (None elsewhere).  Collective under FSDP: every rank calls."""
    if not fsdp:
        return core.to_canonical() if d.is_main else None
    full = get_model_state_dict(model, options=_GATHER)  # module names -> whole CPU tensors
    if not d.is_main:
        return None
    host = Transformer(core.config)  # float32 on the CPU, to read the gathered weights
    host.load_state_dict(full)
    return host.to_canonical()


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """({"{param name}/{exp_avg|exp_avg_sq|step}": tensor}, the param groups' scalars as JSON)
    on rank 0 (empty on the others).  Collective: every rank calls."""
    full = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    tensors = {f"{name}/{key}": value.contiguous() for name, entries in full.get("state", {}).items()
               for key, value in entries.items()}
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
              for group in full.get("param_groups", [])]
    return tensors, groups


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   groups: list[dict]) -> None:
    """Restore what `optimizer_tensors` returned (every rank passes the full state), once
    train/optimizer_checks.py has checked it."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, entry = key.rpartition("/")
        state.setdefault(name, {})[entry] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in groups]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's generator states as uint8 tensors: the CPU's, and this process's CUDA device's."""
    states = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["torch_cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_state(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in states:
        torch.cuda.set_rng_state(states["torch_cuda"], device)
