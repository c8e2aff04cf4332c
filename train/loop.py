"""The training step and loop: AdamW with linear warmup and cosine decay, gradient clipping,
gradient accumulation, bfloat16 autocast, periodic validation and checkpoints.

One optimizer step consumes one global batch of `batch_size` windows: each of the
`world_size` processes takes its block of rows and cuts it into `accum` micro-batches.  Each
micro-batch objective (`Transformer.objective`: the mean next-token cross-entropy, plus PaLM's
weighted logit z-loss and a mixture's weighted load-balancing loss and router z-loss) is divided by `accum`
before backward; DDP / FSDP average the gradients over processes.  So the gradient is that of
the mean of the micro-batch objectives.  The cross-entropy part is that of the global batch
whatever the split (every micro-batch holds as many targets); the load-balancing loss is not
linear in the rows it sees (E sum_e f_e P_e, a product of two means), so a mixture's objective
is the mean of per-micro-batch aux losses, and changes slightly with processes x --grad-accum
(transformers too computes it per forward call, i.e. per micro-batch).  Each
window [T + 1] forwards its first T tokens: the routers see those T positions (the golden's
`loss` of the window would route all T + 1; the last token is only a target here).
`train_step` is the function both `lmref train` and benchmarks/bench_train.py time.

A loss, gradient norm or validation loss that is NaN or infinite stops the loop with
`DivergedError` before that step is logged or saved (`check_finite`): a run never ends with a
NaN checkpoint, and never exits 0 after diverging.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lmref.impl_torch import Transformer
from lmref.spec.config import ModelConfig
from lmref.train.data import BatchStream, shard
from lmref.train.distributed import Dist, as_local, gradient_sync, mean_over_ranks, wrap
from lmref.train.errors import DivergedError, TrainError
from lmref.train.settings import RunSettings


@dataclass
class Trainer:
    """A model ready to train and its optimizer, on this process's device."""

    core: Transformer  # the module (its parameters are sharded DTensors under FSDP)
    model: nn.Module  # core wrapped for data parallelism (DDP, FSDP) or core itself
    forward: Callable  # model, or torch.compile(model)
    optimizer: torch.optim.AdamW
    run: RunSettings
    dist: Dist
    accum: int  # micro-batches per process per step
    autocast: bool  # bfloat16 autocast of the forward pass
    fsdp: bool
    step: int = 0  # optimizer steps done


def bf16_default(device: torch.device) -> bool:
    """Autocast to bfloat16 by default on CUDA devices that support it, never on the CPU."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def adamw(params: list[torch.Tensor], run: RunSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `params` decaying the matrices (embeddings, projections, head), not norms and
    biases.  torch's fused kernel on the CPU and CUDA, as transformers' Trainer defaults to
    ("adamw_torch_fused" for torch >= 2.8): on the CPU, one thread, it takes 10 ms a step over
    9.6M float32 parameters where the foreach path takes 43 ms (benchmarks/README.md, "Training
    loop")."""
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": run.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=run.lr, betas=(run.beta1, run.beta2), eps=run.adam_eps,
                             fused=device.type in ("cpu", "cuda"))


def make_optimizer(model: nn.Module, run: RunSettings, device: torch.device) -> torch.optim.AdamW:
    """`adamw` over every parameter of `model`."""
    return adamw(list(model.parameters()), run, device)


def build_trainer(config: ModelConfig, params: dict[str, np.ndarray], run: RunSettings, d: Dist, *,
                  accum: int = 1, fsdp: bool = False, bf16: bool | None = None, compile: bool = False) -> Trainer:
    """A `Trainer` for `params` (canonical layout), wrapped for `d`'s processes."""
    if accum < 1 or run.batch_size % (d.world_size * accum):
        raise TrainError(f"--batch-size {run.batch_size} must be a multiple of processes x --grad-accum "
                         f"= {d.world_size} x {accum}: every micro-batch holds the same number of sequences")
    if bf16 and d.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainError("--bf16: this CUDA device does not support bfloat16")
    core = Transformer.from_canonical(config, params)  # float32 master weights, on the CPU
    model = wrap(core, d, fsdp)
    forward = torch.compile(model) if compile else model
    optimizer = make_optimizer(model, run, d.device)
    autocast = bf16_default(d.device) if bf16 is None else bf16
    return Trainer(core, model, forward, optimizer, run, d, accum, autocast, fsdp)


def lr_at(step: int, run: RunSettings) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to `lr` over `warmup`
    steps, then cosine decay to `min_lr` at the last step."""
    if step < run.warmup:
        return run.lr * (step + 1) / run.warmup
    progress = min(1.0, (step - run.warmup) / max(1, run.steps - 1 - run.warmup))
    return run.min_lr + 0.5 * (run.lr - run.min_lr) * (1.0 + math.cos(math.pi * progress))


def micro_parts(trainer: Trainer, tokens: np.ndarray) -> dict[str, torch.Tensor]:
    """`Transformer.objective` of windows [b, T + 1] (float32): "loss" (what backward takes),
    "ce" over b * T targets ("logit_z_loss" over the same rows where it is weighted) and, for
    a mixture of experts, "aux", "expert_load" (and "z_loss" where it is weighted) over the T
    forwarded positions.  The forward goes through
    the wrapped model (DDP, FSDP, compile)."""
    tokens = torch.from_numpy(tokens).to(trainer.dist.device, non_blocking=True)
    with torch.autocast(trainer.dist.device.type, dtype=torch.bfloat16, enabled=trainer.autocast):
        logits, routers = trainer.forward(tokens[:, :-1], output_router_logits=True)  # [b, T, vocab], [b, T, E]
    return trainer.core.objective(logits, tokens[:, 1:], routers)


def train_step(trainer: Trainer, micro_batches: list[np.ndarray]) -> dict:
    """One optimizer step on this process's micro-batches; {"loss", "grad_norm", "lr"} with
    "loss" the cross-entropy averaged over the global batch (all processes), "logit_z_loss"
    (PaLM's, of which the objective adds logit_z_loss_coef x) where it is weighted, and for a
    mixture of experts "aux" (the load-balancing loss, of which the objective adds
    aux_loss_coef x), "z_loss" (the router z-loss, where router_z_loss_coef weights it) and
    "expert_load" ([moe layer][expert] fractions of the assignments), each averaged over the
    micro-batches of every process."""
    lr = lr_at(trainer.step, trainer.run)
    for group in trainer.optimizer.param_groups:
        group["lr"] = lr
    totals: dict[str, torch.Tensor] = {}
    for i, tokens in enumerate(micro_batches):
        with gradient_sync(trainer.model, enabled=i == len(micro_batches) - 1):
            parts = micro_parts(trainer, tokens)
            (parts["loss"] / len(micro_batches)).backward()
        for name in ("ce", "logit_z_loss", "aux", "z_loss", "expert_load"):
            if name in parts:
                totals[name] = totals.get(name, 0) + parts[name].detach()
    max_norm = trainer.run.clip if trainer.run.clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), max_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.step += 1
    mean = {name: mean_over_ranks(total / len(micro_batches), trainer.dist) for name, total in totals.items()}
    metrics = {"loss": mean["ce"].item(), "grad_norm": as_local(grad_norm).item(), "lr": lr}
    metrics |= {name: mean[name].item() for name in ("logit_z_loss", "aux", "z_loss") if name in mean}
    if "expert_load" in mean:
        metrics["expert_load"] = mean["expert_load"].tolist()
    return metrics


@torch.no_grad()
def evaluate(trainer: Trainer, batches: list[np.ndarray]) -> float:
    """Mean cross-entropy over validation global batches (each process takes its share)."""
    d = trainer.dist
    total, count = torch.zeros((), device=d.device), 0
    for batch in batches:
        for tokens in shard(batch, d.rank, d.world_size, trainer.accum):
            total += micro_parts(trainer, tokens)["ce"]
            count += 1
    return mean_over_ranks(total / count, d).item()


def check_finite(step: int, metrics: dict[str, float]) -> None:
    """DivergedError unless the loss, the logit z-loss, the load-balancing and router z-losses,
    the gradient norm and the validation loss of `step` (those measured) are finite.  Every
    process sees the same values (the losses are averaged over processes, the norm is
    global), so every process stops together."""
    checked = ("loss", "logit_z_loss", "aux", "z_loss", "grad_norm", "val_loss")
    shown = {k: metrics[k] for k in checked if k in metrics}
    bad = [k for k, v in shown.items() if not math.isfinite(v)]
    if bad:
        name = {"loss": "the loss", "logit_z_loss": "the logit z-loss", "aux": "the load-balancing loss",
                "z_loss": "the router z-loss", "grad_norm": "the gradient norm",
                "val_loss": "the validation loss"}[bad[0]]
        raise DivergedError(f"step {step}: training diverged: {name} is {shown[bad[0]]} "
                            f"({', '.join(f'{k} {v}' for k, v in shown.items())}); no checkpoint was written for "
                            "it, the earlier ones are kept; lower --lr (or lengthen --warmup, tighten --clip) "
                            "and start again")


@dataclass(frozen=True)
class LoopOptions:
    """How often the loop validates and saves, and where it stops."""

    eval_every: int
    save_every: int
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in total
    progress: bool = True


def fit(trainer: Trainer, stream: BatchStream, val_batches: list[np.ndarray], options: LoopOptions,
        log: Callable[[dict], None], save: Callable[[], None]) -> dict:
    """Train until the last step (or `stop_after`), logging every metric through `log`,
    validating every `eval_every` steps and at the end, saving every `save_every` steps and
    at the stop.  Returns the last metrics (`val_step`: the step of the last validation, which
    an earlier stop than the last step leaves behind)."""
    from tqdm.auto import tqdm

    run, d = trainer.run, trainer.dist
    last = run.steps if options.stop_after is None else min(run.steps, options.stop_after)
    tokens_per_step = run.batch_size * run.seq_len
    summary: dict = {"step": trainer.step}
    if trainer.step == 0:
        summary |= {"val_loss": evaluate(trainer, val_batches), "val_step": 0}
        check_finite(0, {"val_loss": summary["val_loss"]})
        log({"kind": "val", "step": 0, "val_loss": summary["val_loss"]})
    bar = tqdm(total=run.steps, initial=trainer.step, unit="step", dynamic_ncols=True,
               disable=not (d.is_main and options.progress))
    busy, done = 0.0, 0
    while trainer.step < last:
        start = time.perf_counter()
        metrics = train_step(trainer, shard(stream.next_batch(), d.rank, d.world_size, trainer.accum))
        check_finite(trainer.step, metrics)  # before anything is logged or saved for this step
        seconds = time.perf_counter() - start
        busy, done = busy + seconds, done + 1
        summary |= {"step": trainer.step, **metrics, "tokens_per_s": done * tokens_per_step / busy}
        log({"kind": "train", "step": trainer.step, **metrics, "tokens": trainer.step * tokens_per_step,
             "tokens_per_s": tokens_per_step / seconds, "epoch": stream.epoch})
        if trainer.step % options.eval_every == 0 or trainer.step == run.steps:
            summary |= {"val_loss": evaluate(trainer, val_batches), "val_step": trainer.step}
            check_finite(trainer.step, {"val_loss": summary["val_loss"]})
            log({"kind": "val", "step": trainer.step, "val_loss": summary["val_loss"]})
        if trainer.step % options.save_every == 0 or trainer.step == last:
            save()
        bar.update(1)
        shown = {"aux": f"{metrics['aux']:.3f}"} if "aux" in metrics else {}
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", **shown, val=f"{summary.get('val_loss', math.nan):.3f}",
                        tok_s=f"{summary['tokens_per_s']:,.0f}", refresh=False)
    bar.close()
    return summary
