"""More than one process: torchrun's environment, DDP / FSDP wrapping, collectives.

Launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR in the environment),
training joins a process group: NCCL when it runs on CUDA, gloo on the CPU.  Every rank
builds the same model from the same canonical params, then

  * DDP (default): each rank holds the whole model and averages gradients (all-reduce);
  * FSDP (`--fsdp`, torch.distributed.fsdp.fully_shard, "FSDP2"): each transformer block and
    the root hold 1/world_size of their parameters, gradients and AdamW moments, gathered
    just in time for forward and backward, so a model larger than one device's memory fits
    in the devices' sum.

Without torchrun, training runs in this one process, on one device, unwrapped.
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmref.train.errors import TrainError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among `world_size` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    distributed: bool = False  # a process group exists (launched by torchrun)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _device(flag: str, local_rank: int) -> torch.device:
    if flag not in DEVICES:
        raise TrainError(f"--device must be one of {', '.join(DEVICES)}, got {flag!r}")
    if flag == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if flag == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(device_flag: str = "auto") -> Dist:
    """This process's `Dist`; joins the process group when launched by torchrun."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return Dist(device=_device(device_flag, 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = _device(device_flag, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                device=device, distributed=True)


def teardown(d: Dist) -> None:
    """Leave the process group.  The DDP/FSDP modules and optimizer of the run sit in reference
    cycles that hold the group's work objects; collected at interpreter exit instead, after the
    group is gone, gloo's threads can abort the process ("terminate called without an active
    exception", seen once in CI in rank 1 of an FSDP run).  So they are collected first."""
    if d.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def wrap(model: nn.Module, d: Dist, fsdp: bool) -> nn.Module:
    """`model` (on the CPU or `d.device`) ready for data-parallel training on `d.device`."""
    if fsdp:
        if not d.distributed:
            raise TrainError("--fsdp shards the model over several processes: launch with "
                             "`torchrun --nproc_per_node=N -m lmref train ... --fsdp`")
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(d.device.type, (d.world_size,))
        for layer in model.layers:  # one all-gather per block: only one block is ever whole
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)  # the embeddings, final norm and head
    model = model.to(d.device)
    if not d.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def gradient_sync(model: nn.Module, enabled: bool):
    """A context in which backward does (enabled) or does not (accumulating) reduce gradients
    across ranks; only the last micro-batch of a step needs to."""
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel as DDP

    if isinstance(model, DDP) and not enabled:
        return model.no_sync()
    if isinstance(model, FSDPModule):
        return _fsdp_sync(model, enabled)
    return nullcontext()


@contextmanager
def _fsdp_sync(model, enabled: bool):
    model.set_requires_gradient_sync(enabled)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def mean_over_ranks(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """The mean of a tensor over all ranks (itself when there is one process)."""
    if not d.distributed:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / d.world_size


def as_local(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a DTensor's full value (FSDP's gradient norm), else the tensor."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def broadcast_text(text: str | None, d: Dist) -> str:
    """Rank 0's `text` on every rank, sent as UTF-8 bytes in tensors (nothing pickled)."""
    if not d.distributed:
        return text
    payload = bytearray(text.encode("utf-8")) if d.is_main else bytearray()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=d.device)
    dist.broadcast(size, src=0)
    data = torch.frombuffer(payload, dtype=torch.uint8) if payload else torch.empty(int(size), dtype=torch.uint8)
    data = data.to(d.device)
    dist.broadcast(data, src=0)
    return data.cpu().numpy().tobytes().decode("utf-8")


def barrier(d: Dist) -> None:
    if d.distributed:
        dist.barrier()
