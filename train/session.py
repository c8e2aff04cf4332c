"""`lmref train` from start to end: settings, corpus, tokenizer, model, resumption, the loop,
checkpoints, the log and the plot.  `train(...)` is what the command line calls.

Where a run writes (convert/outputs.py, kind "train-run"): a new run takes `--out` only when it
is new, empty, or marked as a train run's without holding one (a run stopped before its first
checkpoint); a resumed run writes into its own run directory (the one holding the checkpoint
it resumes), or into a new or empty one, or one holding the same run (its latest checkpoint
has the same run_id).  Nothing is written before those checks and the memory estimate pass
(`training_bytes`, refused with the estimate unless --force-memory), so a refused command
leaves every file as it was.  Under torchrun every process checks; rank 0 writes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmref.convert.errors import CheckpointError
from lmref.convert.outputs import TRAIN_RUN_KIND, check_output, claim
from lmref.spec.config import ModelConfig
from lmref.spec.errors import OutputError
from lmref.spec.outputs import check_not_an_input, marker_kind
from lmref.spec.params import init_params, param_count
from lmref.spec.resources import check_allocation
from lmref.train import checkpoint
from lmref.train.data import (
    DEFAULT_CORPUS,
    BatchStream,
    Windows,
    load_corpus,
    split,
    unigram_cross_entropy,
    validation_batches,
)
from lmref.train.distributed import Dist, barrier, broadcast_text, setup, teardown
from lmref.train.errors import TrainError
from lmref.train.loop import LoopOptions, Trainer, build_trainer, fit
from lmref.train.metrics import METRICS_FILE, MetricsLog, read_metrics
from lmref.train.optimizer_checks import check_optimizer_tensors, check_param_groups, expected_groups
from lmref.train.plot import PLOT_FILE, plot_losses
from lmref.train.settings import (
    RunSettings,
    check_fits,
    check_sizes,
    model_config,
    new_settings,
    resumed_settings,
    saved_arch_problem,
    training_bytes,
)
from lmref.train.state import canonical_params, load_optimizer, optimizer_tensors, rng_state, set_rng_state
from lmref.train.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer


# Options a resumed run takes from its checkpoint unless given again, and their defaults.
SAVED_OPTIONS = {"grad_accum": 1, "eval_every": 50, "eval_batches": 4, "save_every": 100, "keep": 2}


@dataclass(frozen=True)
class Options:
    """How to run (not what): none of these change the loss trajectory beyond float rounding.
    None: the default (SAVED_OPTIONS), or on --resume the value the checkpoint saved."""

    out: str | None = None  # the run directory; default runs/<arch>, or the resumed run's
    resume: str | None = None  # a run directory or one of its step-N checkpoints
    device: str = "auto"
    fsdp: bool = False
    bf16: bool | None = None  # None: on CUDA with bf16 support, off on the CPU
    compile: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in total
    progress: bool = True
    grad_accum: int | None = None  # micro-batches per process per step
    eval_every: int | None = None  # validate every N steps (and at the last)
    eval_batches: int | None = None  # global batches of validation windows per evaluation
    save_every: int | None = None  # checkpoint every N steps (and at the stop)
    keep: int | None = None  # checkpoints kept
    force_memory: bool = False  # train even when the memory estimate exceeds the memory available

    def settled(self, saved: dict | None) -> Options:
        """Options with every None replaced by the checkpoint's value or the default."""
        values = {name: getattr(self, name) if getattr(self, name) is not None
                  else (saved or {}).get(name, default) for name, default in SAVED_OPTIONS.items()}
        checked = values if self.stop_after is None else {**values, "stop_after": self.stop_after}
        for name, value in checked.items():
            if not isinstance(value, int) or value < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        return dataclasses.replace(self, **values)

    def loop(self) -> LoopOptions:
        return LoopOptions(eval_every=self.eval_every, save_every=self.save_every, stop_after=self.stop_after,
                           progress=self.progress)


@dataclass
class Start:
    """What a run starts (or resumes) from."""

    run: RunSettings
    config: ModelConfig
    params: dict[str, np.ndarray]
    tokenizer: ByteTokenizer | BPETokenizer
    text: str
    data_sha256: str
    out: Path
    run_id: str  # recorded in every checkpoint: rotation deletes only this run's
    inputs: tuple[str | Path, ...] = ()  # what the run reads: --out may not be, hold or lie in any
    claim: bool = True  # claim `out` before writing (False: the resumed run's own directory)
    snapshot: checkpoint.Snapshot | None = None  # when resuming
    resumed_from: Path | None = None


def _tokenizer(run: RunSettings, text: str, d: Dist):
    if run.tokenizer == "byte":
        return ByteTokenizer()
    trained = BPETokenizer.train(text, run.vocab_size).to_json() if d.is_main else None
    return BPETokenizer.from_json(broadcast_text(trained, d))  # every rank: rank 0's merges


def _vocab_note(run: RunSettings, config: ModelConfig) -> str:
    """What the start line adds when the corpus gave BPE fewer merges than --vocab-size asked."""
    if run.vocab_size is None or config.vocab_size >= run.vocab_size:
        return ""
    return f", of the {run.vocab_size:,} --vocab-size asked: the corpus has no more pairs to merge"


def _data_inputs(data: str | None) -> tuple[str, ...]:
    return () if data in (None, DEFAULT_CORPUS) else (data,)


MEMORY_HINT = "pass --force-memory to allocate anyway"


def _check_memory(config: ModelConfig, run: RunSettings, options: Options, d: Dist, *, fresh: bool) -> None:
    """Refuse (ResourceError, with the estimate) a run whose allocations cannot fit."""
    need = training_bytes(config, run, processes=d.world_size, accum=options.grad_accum, fresh=fresh)
    check_allocation(need, f"training {config.name} ({param_count(config):,} parameters, batches of "
                     f"{run.batch_size} x {run.seq_len} tokens)", force=options.force_memory, hint=MEMORY_HINT)


def _new_run(flags: dict, sizes: dict, options: Options, d: Dist) -> Start:
    run = new_settings(flags)
    out = Path(options.out or f"runs/{run.arch}")
    if (out / checkpoint.LATEST).exists():
        raise TrainError(f"--out {out} already holds a run (see {out / checkpoint.LATEST}); "
                         f"--resume {out} to continue it, or choose another --out")
    if saved := checkpoint.step_folders(out):  # a run killed before `latest` was first written
        raise TrainError(f"--out {out} already holds a run's checkpoints ({', '.join(p.name for p in saved)}); "
                         f"--resume {saved[-1]} to continue it, or choose another --out")
    inputs = _data_inputs(run.data)
    check_output(out, TRAIN_RUN_KIND, inputs=inputs)  # nothing written yet: claimed just before the first write
    text, sha = load_corpus(run.data)
    tokenizer = _tokenizer(run, text, d)
    config = model_config(run.arch, sizes, tokenizer.vocab_size)
    check_fits(config, run)
    _check_memory(config, run, options, d, fresh=True)  # before init_params allocates
    params = {k: v.astype(np.float32) for k, v in init_params(config, run.seed).items()}
    return Start(run, config, params, tokenizer, text, sha, out, checkpoint.new_run_id(), inputs)


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _run_id_in(directory: Path) -> str | None:
    """The run_id of the run directory's latest checkpoint (None: no readable one)."""
    try:
        state = checkpoint.read_state(checkpoint.resolve(directory))
    except CheckpointError:
        return None
    return state.get("run_id")


def _resume_output(out: Path, own: Path, run_id: str, inputs: tuple) -> bool:
    """Check where a resumed run may write; True when `out` is to be claimed (a new or empty
    directory), False when it is the run's own (its checkpoint's run directory, or one holding
    the same run)."""
    if _same_path(out, own):
        return False
    check_not_an_input(out, inputs)
    if (out / checkpoint.STATE_FILE).exists():
        raise OutputError(f"--out {out}: is a checkpoint, not a run directory; a resumed run writes into its own "
                          f"run directory ({own}) or a new or empty one")
    if out.is_dir() and any(out.iterdir()):
        other = _run_id_in(out)
        if other is not None and other == run_id:
            return False
        if other is not None or (out / checkpoint.LATEST).exists() or marker_kind(out) == TRAIN_RUN_KIND:
            raise OutputError(f"--out {out}: holds another run; a resumed run writes into its own run directory "
                              f"({own}) or a new or empty one, never into another run's")
    check_output(out, TRAIN_RUN_KIND, inputs=inputs)  # a file, or a directory of somebody else's
    return True


def _resumed_run(flags: dict, sizes: dict, options: Options) -> Start:
    directory, snapshot = checkpoint.load(options.resume)
    try:
        saved = RunSettings.from_dict(snapshot.state["run"])
    except (TypeError, TrainError) as e:
        raise CheckpointError(f"{directory / checkpoint.STATE_FILE}: no valid run settings ({e})") from None
    problem = saved_arch_problem(saved.arch, snapshot.config)
    if problem:
        raise CheckpointError(f"{directory / checkpoint.STATE_FILE}: {problem}; the checkpoint is damaged")
    data_sha256 = snapshot.state["data"]["sha256"]
    run = resumed_settings(saved, flags, options.resume)
    check_sizes(snapshot.config, sizes, options.resume)
    run_id = snapshot.state.get("run_id")
    run_id = run_id if isinstance(run_id, str) and run_id else checkpoint.new_run_id()  # older checkpoints: none
    own = checkpoint.run_directory(directory)
    out = Path(options.out) if options.out else own
    inputs = (directory, *_data_inputs(flags.get("data") or run.data))
    to_claim = _resume_output(out, own, run_id, inputs)
    text, sha = load_corpus(flags.get("data") or run.data)
    if sha != data_sha256:
        raise TrainError(f"--resume {options.resume}: the corpus ({flags.get('data') or run.data}) differs from "
                         f"the one the checkpoint was trained on (sha256 {sha[:12]}... != {data_sha256[:12]}...; "
                         "the embedded corpus changes with the Python version)")
    if flags.get("data"):
        run = dataclasses.replace(run, data=flags["data"])
    tokenizer = load_tokenizer(directory, snapshot.state["tokenizer"], snapshot.config.vocab_size)
    return Start(run, snapshot.config, snapshot.params, tokenizer, text, sha, out, run_id, inputs, to_claim,
                 snapshot, directory)


def _data_position(state: dict, batch_size: int, directory: Path) -> int:
    """The checkpoint's data position: the windows its steps have read, one batch a step."""
    position, step = state["data"]["position"], state["step"]
    if position != step * batch_size:
        raise CheckpointError(f"{directory / checkpoint.STATE_FILE}: data.position {position} is not where step "
                              f"{step} of this run reads (step x batch size {batch_size} = {step * batch_size} "
                              "windows read); the checkpoint is damaged")
    return position


def _restore(trainer: Trainer, stream: BatchStream, snapshot: checkpoint.Snapshot, directory: Path) -> None:
    """Load the checkpoint's optimizer, RNG and data position into the run, each checked first."""
    state = snapshot.state
    position = _data_position(state, stream.batch_size, directory)
    groups = state["optimizer"]["param_groups"]
    check_param_groups(groups, expected_groups(trainer.core, trainer.optimizer, trainer.run, state["step"]),
                       str(directory / checkpoint.STATE_FILE))
    check_optimizer_tensors(trainer.core, snapshot.optimizer, state["step"], str(directory / checkpoint.OPTIMIZER_FILE))
    load_optimizer(trainer.model, trainer.optimizer, snapshot.optimizer, groups)
    set_rng_state(snapshot.rng, trainer.dist.device)
    trainer.step = state["step"]
    stream.position = position


def _nothing_to_train(step: int, steps: int, stop_after: int | None) -> str:
    """Why a resumed run at `step` has no step left, and what the user can do about it."""
    if step >= steps:  # the schedule (warmup, cosine decay to --min-lr at the last step) ends at --steps
        return (f"the run is finished (step {step} of its --steps {steps}); a resumed run keeps its settings, "
                f"--steps included, so it cannot be extended: start a new run with a larger --steps in another --out")
    return (f"the run is at step {step} and --stop-after {stop_after} stops it there; give a --stop-after above "
            f"{step} (its --steps is {steps}) or leave it out")


def _saver(trainer: Trainer, start: Start, stream: BatchStream, options: Options, summary: dict):
    """The closure `fit` calls to write a checkpoint (collective: every rank calls it)."""
    d = trainer.dist

    def save() -> None:
        params = canonical_params(trainer.model, trainer.core, trainer.fsdp, d)
        tensors, groups = optimizer_tensors(trainer.model, trainer.optimizer)
        if d.is_main:
            state = {
                "step": trainer.step,
                "data": {"position": stream.position, "epoch": stream.epoch, "sha256": start.data_sha256},
                "run": start.run.to_dict(),
                "tokenizer": start.tokenizer.info,
                "optimizer": {"param_groups": groups},
                "options": {name: getattr(options, name) for name in SAVED_OPTIONS},
                "world_size": d.world_size,
                "torch_version": torch.__version__,
                "run_id": start.run_id,
            }
            snap = checkpoint.Snapshot(start.config, params, tensors, rng_state(d.device), state,
                                       start.tokenizer.files())
            summary["checkpoint"] = str(checkpoint.save(start.out, snap, keep=options.keep))
            title = f"{start.run.arch}, {param_count(start.config):,} parameters, {start.tokenizer.kind} tokens"
            plot_losses(read_metrics(start.out / METRICS_FILE), start.out / PLOT_FILE, title=title)
        barrier(d)

    return save


def train(flags: dict, sizes: dict, options: Options, extra: dict | None = None) -> dict:
    """Run (or resume) a training run; returns a summary (final metrics, paths) on rank 0.

    `flags`: RunSettings fields given on the command line (None: not given); `sizes`: the
    model size flags (settings.SIZE_FIELDS); `extra`: a vision run's tower and stage flags
    (train/multimodal.py VISION_FLAGS).  A new run of an arch with a vision tower is a vision
    run (train/multimodal.py), which cannot be resumed."""
    from lmref.train.multimodal import refuse_vision_flags, train_captions, vision_arch

    d = setup(options.device)
    try:
        if options.resume is None and vision_arch(flags.get("arch")):
            return train_captions(flags, sizes, extra or {}, options, d)
        refuse_vision_flags(extra or {})
        return _train(flags, sizes, options, d)
    finally:
        teardown(d)


def _refuse_vision_resume(where: str) -> None:
    """TrainError when --resume names a vision run's checkpoint (train/multimodal.py: not resumable)."""
    from lmref.train.multimodal import vision_arch

    try:
        state = checkpoint.read_state(checkpoint.resolve(where))
    except CheckpointError:
        return  # _resumed_run reports what is wrong with it
    arch = state.get("run", {}).get("arch") if isinstance(state.get("run"), dict) else None
    if vision_arch(arch):
        raise TrainError(f"--resume {where}: a vision run ({arch}) cannot be resumed: its stages and its text-only "
                         "baseline run in one go (a few minutes); start a new run with another --out")


def _train(flags: dict, sizes: dict, options: Options, d: Dist) -> dict:
    if options.resume:
        _refuse_vision_resume(options.resume)
        start = _resumed_run(flags, sizes, options)
        options = options.settled(start.snapshot.state.get("options"))
        _check_memory(start.config, start.run, options, d, fresh=False)
    else:
        options = options.settled(None)
        start = _new_run(flags, sizes, options, d)
    run = start.run
    check_fits(start.config, run)
    train_tokens, val_tokens = split(start.tokenizer.encode(start.text), run.val_fraction)
    stream = BatchStream(Windows(train_tokens, run.seq_len, "training", run.data), run.batch_size, run.seed)
    val_batches = validation_batches(Windows(val_tokens, run.seq_len, "validation", run.data), run.batch_size,
                                     options.eval_batches)
    trainer = build_trainer(start.config, start.params, run, d, accum=options.grad_accum, fsdp=options.fsdp,
                            bf16=options.bf16, compile=options.compile)
    if start.snapshot is not None:
        _restore(trainer, stream, start.snapshot, start.resumed_from)
    summary = {"out": str(start.out), "plot": str(start.out / PLOT_FILE),
               "unigram_baseline": unigram_cross_entropy(train_tokens, val_tokens, start.config.vocab_size)}
    last = run.steps if options.stop_after is None else min(run.steps, options.stop_after)
    if start.snapshot is not None and trainer.step >= last:  # a resume with no step left: nothing is written
        why = _nothing_to_train(trainer.step, run.steps, options.stop_after)
        if start.claim:  # a new directory for no step
            raise TrainError(f"--resume {options.resume}: nothing to train into {start.out}: {why}; nothing was "
                             "written")
        print(f"lmref train: nothing to train: {why}; nothing was written", flush=True)
        return summary | {"step": trainer.step}
    if start.claim and d.is_main:  # the first write of the run; every check has passed on every rank
        claim(start.out, TRAIN_RUN_KIND, inputs=start.inputs)
    log = MetricsLog(start.out / METRICS_FILE, trainer.step if start.snapshot else None) if d.is_main else None
    try:
        if log:
            log({"kind": "run", "step": trainer.step, "arch": run.arch, "params": param_count(start.config),
                 "config": start.config.to_dict(), "run": run.to_dict(), "world_size": d.world_size,
                 "device": str(d.device), "bf16": trainer.autocast, "grad_accum": trainer.accum,
                 "fsdp": trainer.fsdp, "train_tokens": len(train_tokens), "val_tokens": len(val_tokens),
                 "unigram_baseline": summary["unigram_baseline"],
                 "resumed_from": str(start.resumed_from) if start.resumed_from else None})
            print(f"lmref train: {run.arch} ({start.config.name}, {param_count(start.config):,} params, "
                  f"vocab {start.config.vocab_size}{_vocab_note(run, start.config)}) on {d.world_size} process(es), "
                  f"{d.device}, "
                  f"bf16 autocast {'on' if trainer.autocast else 'off'}; {len(train_tokens):,} training tokens; "
                  f"run directory {start.out}" + (f"; resuming at step {trainer.step}" if start.snapshot else ""),
                  flush=True)
        save = _saver(trainer, start, stream, options, summary)
        summary |= fit(trainer, stream, val_batches, options.loop(), log or (lambda record: None), save)
    finally:
        if log:
            log.close()
    return summary
