"""What `lmref train --resume` checks of the optimizer state a checkpoint saved, before it
loads it and before the run writes anything (a refusal names the file and the entry).

trainer_state.json's `optimizer.param_groups` must be exactly the groups the run's settings
give through `loop.make_optimizer` (a fresh optimizer of this run, `expected_groups`): as many
groups, each with AdamW's entries and no others, every hyperparameter equal to the run's (a
`maximize` true, a negative `eps`, another `weight_decay` or a one-element `betas` would train
another objective, or crash the step with a torch traceback), and each group's `params` the
model's parameters of that group, in order.  Their `lr` is what the schedule set for the step
the checkpoint ends (`loop.lr_at(step - 1)`); the loop sets it again before every step.

optimizer.safetensors must hold AdamW's state of exactly the model's parameters: for each,
`exp_avg` and `exp_avg_sq` float32 of its shape, finite, the second moments >= 0, and a float32
scalar `step` equal to the checkpoint's step (every step updates every parameter)."""

from __future__ import annotations

import torch

from lmref.convert.errors import CheckpointError
from lmref.impl_torch import Transformer
from lmref.train.loop import lr_at
from lmref.train.settings import RunSettings

ADAMW_ENTRIES = ("exp_avg", "exp_avg_sq", "step")  # per parameter; "step" is a scalar


def expected_groups(core: Transformer, optimizer: torch.optim.Optimizer, run: RunSettings, step: int) -> list[dict]:
    """The param groups a checkpoint of `run` at `step` saves (state.optimizer_tensors' JSON form):
    the fresh `optimizer`'s, its parameters by name, the lr of the schedule's last step."""
    names = {id(p): name for name, p in core.named_parameters()}
    lr = lr_at(step - 1, run) if step > 0 else run.lr
    return [{**{key: list(value) if isinstance(value, tuple) else value for key, value in group.items()},
             "lr": lr, "params": [names[id(p)] for p in group["params"]]} for group in optimizer.param_groups]


def _same(got: object, want: object) -> bool:
    """Whether a JSON value equals the expected one: a bool or null only itself, a number any
    equal int or float (not a bool), a list element by element."""
    if isinstance(want, bool) or want is None:
        return got is want
    if isinstance(want, (int, float)):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and got == want
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    return type(got) is type(want) and got == want


def check_param_groups(saved: object, expected: list[dict], where: str) -> None:
    """CheckpointError naming `where` and the entry unless `saved` is `expected`."""
    if not isinstance(saved, list) or len(saved) != len(expected):
        count = len(saved) if isinstance(saved, list) else repr(saved)
        raise CheckpointError(f"{where}: optimizer.param_groups holds {count} group(s); the run's settings give "
                              f"{len(expected)} (decayed matrices, then undecayed norms and biases)")
    for index, (group, want) in enumerate(zip(saved, expected)):
        entry = f"optimizer.param_groups[{index}]"
        if not isinstance(group, dict):
            raise CheckpointError(f"{where}: {entry} is {group!r}, not a JSON object")
        unknown = sorted(set(group) - set(want))
        if unknown:
            raise CheckpointError(f"{where}: {entry}.{unknown[0]} is not an entry of this run's AdamW groups "
                                  f"(they hold {', '.join(want)})")
        for key, value in want.items():
            if key not in group:
                raise CheckpointError(f"{where}: {entry} has no {key} entry; the run's settings give {value!r}")
            if key == "params":
                _check_params(group[key], value, f"{where}: {entry}.params")
            elif not _same(group[key], value):
                source = "the run's schedule gives" if key == "lr" else "the run's settings give"
                raise CheckpointError(f"{where}: {entry}.{key} is {group[key]!r}; {source} {value!r}")


def _check_params(saved: object, names: list[str], where: str) -> None:
    if not isinstance(saved, list) or len(saved) != len(names):
        count = f"{len(saved)} name(s)" if isinstance(saved, list) else repr(saved)
        raise CheckpointError(f"{where} lists {count}; the model has {len(names)} parameter(s) in that group")
    for position, (got, want) in enumerate(zip(saved, names)):
        if got != want:
            raise CheckpointError(f"{where}[{position}] is {got!r}; the model's parameter there is {want!r}")


def check_optimizer_tensors(core: Transformer, tensors: dict[str, torch.Tensor], step: int, where: str) -> None:
    """CheckpointError naming `where` unless `tensors` are AdamW's state of exactly the model's
    parameters after `step` steps (a state of another shape or dtype can crash the step)."""
    shapes = {name: tuple(p.shape) for name, p in core.named_parameters() if p.requires_grad}
    expected = {f"{name}/{entry}": () if entry == "step" else shape
                for name, shape in shapes.items() for entry in ADAMW_ENTRIES}
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise CheckpointError(f"{where}: holds {unknown[0]!r}, which is not AdamW state of a parameter of this "
                              f"model ({core.config.name}); the file is not this run's optimizer state")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"{where}: no {missing[0]!r} ({len(missing)} of the model's {len(expected)} AdamW "
                              "tensors missing); the file is not this run's optimizer state")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise CheckpointError(f"{where}: {key} has shape {list(tensors[key].shape)}, the model's {list(shape)}; "
                                  "the file is not this run's optimizer state")
        problem = _value_problem(key, tensors[key], step)
        if problem:
            raise CheckpointError(f"{where}: {key} {problem}; the file is damaged")


def _value_problem(key: str, tensor: torch.Tensor, step: int) -> str | None:
    """What is wrong with the values of one AdamW tensor (None: nothing)."""
    if tensor.dtype != torch.float32:
        return f"is {str(tensor.dtype).removeprefix('torch.')}, AdamW's state is float32"
    if not bool(torch.isfinite(tensor).all()):
        return "holds NaN or infinite values"
    if key.endswith("/exp_avg_sq") and bool((tensor < 0).any()):
        return "holds negative values (a second moment is a mean of squares, >= 0)"
    if key.endswith("/step") and float(tensor) != step:
        return f"is {float(tensor):g}; the checkpoint is at step {step}, and every step updates every parameter"
    return None
