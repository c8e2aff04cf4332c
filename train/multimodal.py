"""`lmref train --arch ARCH` for an arch with a vision tower (a `vision` sub-config:
llava-1.5-7b, llava-1.5-13b): LLaVA's two training stages on the embedded shapes set
(train/shapes.py as train/captions.py's samples) beside a text-only baseline of the same
decoder, in one run (the phases: train/stages.py).

    steps 0 .. P             pretrain    the decoder, text only                 --text-steps (100)
    steps P .. P + S1 + S2   baseline    that decoder goes on, text only        S1 + S2 steps
    steps P .. P + S1        projector   stage 1: the projector alone           --projector-steps (100)
    steps P + S1 .. end      full        stage 2: everything                    --steps (200)

LLaVA starts from a trained language model (Vicuna) and a trained tower (CLIP); here the
decoder first learns the captions' language alone (pretrain) and the tower starts random.
Then the image model (that decoder, with the tower and projector of `init_params`) and the
baseline read the same scenes in the same order for the same number of steps, scored on the
same targets; the only difference is what the placeholders' rows hold: the image's projected
features, or the placeholder token's own embedding.  The caption loss the image model ends
with, against the baseline's, is what the image pathway carries.

The model is the decoder of text runs (tiny(ARCH) and the size flags, train/settings.py) with
the byte tokenizer and the image placeholder (vocab 257, vision.image_token_id 256:
train/tokenizer.py `ImageByteTokenizer`) and a tower sized for a CPU (TOWER_DEFAULTS, the
tower flags); every flag of the preset's tower is kept (quick GELU, feature layer -2, the
class token dropped, the GELU projector).

The run directory is a text run's: metrics.jsonl (each train and val record names its "model",
"text" or "image", and its "stage"; a last "summary" record holds both final losses), loss.png
(train/plot.py `plot_caption_losses`) and the image model's checkpoints at the end of each
stage, in the text runs' format (`lmref generate --image` and `lmref convert --to-hf` read them,
`lmref export` too once its graphs take images).  Not
supported for a vision run (refused by name): --resume and --stop-after (a run is a few
minutes; its checkpoints hold the optimizer and RNG state all the same), --save-every,
torchrun / --fsdp, --compile, --grad-accum > 1, and the text-corpus flags.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmref.convert.outputs import TRAIN_RUN_KIND, check_output, claim
from lmref.impl_torch import Transformer
from lmref.spec.config import ModelConfig
from lmref.spec.params import init_params, param_count
from lmref.spec.presets import PRESETS
from lmref.spec.resources import check_allocation
from lmref.train import checkpoint
from lmref.train.captions import CaptionStream, sequence_length, validation_batches
from lmref.train.distributed import Dist
from lmref.train.errors import TrainError
from lmref.train.loop import bf16_default, check_finite
from lmref.train.metrics import METRICS_FILE, MetricsLog, read_metrics
from lmref.train.plot import PLOT_FILE, plot_caption_losses
from lmref.train.settings import (
    TRAIN_BYTES_PER_PARAM,
    RunSettings,
    check_arch,
    model_config,
    training_bytes,
)
from lmref.train.stages import BASELINE, FULL, PRETRAIN, PROJECTOR, PhaseTrainer, evaluate, phase_trainer, train_step
from lmref.train.state import optimizer_tensors, rng_state
from lmref.train.tokenizer import ImageByteTokenizer

SHAPES_DATA = "shapes"  # RunSettings.data of a vision run: the embedded image-caption set
DEFAULT_STEPS = 200  # stage 2's steps when --steps is not given
TEXT, IMAGE = "text", "image"  # the two models of a run, as the metrics name them
# The tower's sizes (flag name -> default): 24 x 24 images, 6 x 6 patches of 4 pixels, width 64,
# 3 layers (the feature layer -2 runs 2 of them), 4 heads of 16 (None: width / 16).
TOWER_DEFAULTS = {"image_size": 24, "patch_size": 4, "vision_d_model": 64, "vision_n_layers": 3, "vision_n_heads": None}
TOWER_HEAD_DIM = 16
STAGE_DEFAULTS = {"text_steps": 100, "projector_steps": 100}
VISION_FLAGS = (*TOWER_DEFAULTS, *STAGE_DEFAULTS)  # the flags only a vision run takes
TEXT_ONLY_FLAGS = ("data", "tokenizer", "vocab_size", "seq_len", "val_fraction")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def vision_arch(arch: str | None) -> bool:
    """Whether `arch` is a preset with a vision tower (a family, an unknown name, not a name: False)."""
    return isinstance(arch, str) and arch in PRESETS and PRESETS[arch].vision is not None


def refuse_vision_flags(extra: dict) -> None:
    """TrainError when a flag only vision runs take is given to any other run."""
    given = [_flag(name) for name in VISION_FLAGS if extra.get(name) is not None]
    if given:
        towers = ", ".join(name for name, preset in PRESETS.items() if preset.vision is not None)
        raise TrainError(f"{', '.join(given)}: only for a new run of an arch with a vision tower ({towers})")


def check_vision_options(flags: dict, options, d: Dist) -> None:
    """TrainError naming the first flag or launch a vision run does not support."""
    arch = flags["arch"]
    for name in TEXT_ONLY_FLAGS:
        if flags.get(name) is not None:
            raise TrainError(f"{_flag(name)}: not for a vision run ({arch}): it trains on the embedded image-caption "
                             "set (train/shapes.py) with the byte tokenizer and an image placeholder; its sequences "
                             "are as long as the image's tokens and the longest caption, and it validates on "
                             "--eval-batches x --batch-size held-out scenes")
    if d.distributed or options.fsdp:
        raise TrainError(f"a vision run ({arch}) trains in one process: torchrun (DDP) and --fsdp are not supported "
                         "for it (its batches are not sharded over processes); run `lmref train` alone")
    stages = "it runs its stages in one go (a few minutes), saving at the end of each, and cannot be resumed"
    unsupported = {"--stop-after": (options.stop_after is not None, stages),
                   "--save-every": (options.save_every is not None, stages),
                   "--compile": (options.compile, "its stages run eagerly; torch.compile is for text runs"),
                   "--grad-accum": (options.grad_accum not in (None, 1),
                                    "each step is one batch of --batch-size scenes: lower --batch-size instead")}
    for flag, (given, why) in unsupported.items():
        if given:
            raise TrainError(f"{flag}: not supported for a vision run ({arch}): {why}")


@dataclass(frozen=True)
class Stages:
    """The steps of the phases that --steps (stage 2) does not give."""

    text_steps: int = STAGE_DEFAULTS["text_steps"]  # the decoder's text-only pretraining
    projector_steps: int = STAGE_DEFAULTS["projector_steps"]  # stage 1

    def __post_init__(self) -> None:
        for name in ("text_steps", "projector_steps"):
            if getattr(self, name) < 0:
                raise TrainError(f"{_flag(name)} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def vision_config(arch: str, sizes: dict, tower: dict, tokenizer: ImageByteTokenizer) -> ModelConfig:
    """The decoder of a text run of `arch` with the tokenizer's vocabulary, and tiny(arch)'s tower
    (every flag kept) at the tower sizes given over TOWER_DEFAULTS, filling the tokenizer's
    placeholder.  The tower's d_ff keeps the preset's ratio to its width (CLIP's 4); a feature
    layer counted from the start scales with the depth (tiny's rule)."""
    config = model_config(arch, sizes, tokenizer.vocab_size)
    preset = PRESETS[arch].vision
    s = TOWER_DEFAULTS | {k: v for k, v in tower.items() if k in TOWER_DEFAULTS and v is not None}
    for name in tower.keys() & TOWER_DEFAULTS.keys():  # named as the user gave them, before the config checks
        if tower[name] is not None and tower[name] < 1:
            raise TrainError(f"{_flag(name)} must be >= 1, got {tower[name]}")
    width, depth = s["vision_d_model"], s["vision_n_layers"]
    heads = max(1, width // TOWER_HEAD_DIM) if s["vision_n_heads"] is None else s["vision_n_heads"]
    layer = preset.feature_layer if preset.feature_layer < 0 else round(preset.feature_layer * depth / preset.n_layers)
    vision = dataclasses.replace(
        config.vision, image_size=s["image_size"], patch_size=s["patch_size"], d_model=width, n_heads=heads,
        n_layers=depth, d_ff=round(width * preset.d_ff / preset.d_model), feature_layer=layer,
        image_token_id=tokenizer.image_token_id)
    return dataclasses.replace(config, vision=vision)


@dataclass
class VisionRun:
    """What a vision run is: its settings, model, tokenizer and where it writes."""

    run: RunSettings
    stages: Stages
    config: ModelConfig
    tokenizer: ImageByteTokenizer
    out: Path
    run_id: str

    @property
    def text_config(self) -> ModelConfig:
        """The decoder alone: the baseline's model (the placeholder is an ordinary token to it)."""
        return dataclasses.replace(self.config, vision=None)


def _check_captions_fit(config: ModelConfig, seq_len: int) -> None:
    """TrainError when a sample (the image's tokens, the longest caption) exceeds the context;
    its length follows from --image-size and --patch-size, never from --seq-len."""
    v = config.vision
    if seq_len > config.max_seq_len:
        raise TrainError(f"--image-size {v.image_size} --patch-size {v.patch_size}: a sample is {seq_len} tokens "
                         f"({v.tokens_per_image} for the image, the rest for the longest caption), more than the "
                         f"model's context max_seq_len {config.max_seq_len}; raise --max-seq-len, or lower "
                         "--image-size or raise --patch-size")


def new_vision_run(flags: dict, sizes: dict, extra: dict, options) -> VisionRun:
    """The run the flags describe, with its output checked (nothing written yet)."""
    check_arch(flags["arch"])
    stages = Stages(**{k: v for k, v in extra.items() if k in STAGE_DEFAULTS and v is not None})
    tokenizer = ImageByteTokenizer()
    config = vision_config(flags["arch"], sizes, extra, tokenizer)
    given = {k: v for k, v in flags.items() if v is not None}
    if "lr" in given and "min_lr" not in given:
        given["min_lr"] = given["lr"] / 10
    run = RunSettings(**({"steps": DEFAULT_STEPS} | given), data=SHAPES_DATA, seq_len=sequence_length(config.vision))
    _check_captions_fit(config, run.seq_len)
    out = Path(options.out or f"runs/{run.arch}")
    if (out / checkpoint.LATEST).exists():
        raise TrainError(f"--out {out} already holds a run (see {out / checkpoint.LATEST}); choose another --out")
    check_output(out, TRAIN_RUN_KIND)
    return VisionRun(run, stages, config, tokenizer, out, checkpoint.new_run_id())


def _check_memory(vr: VisionRun, options) -> None:
    """Refuse (ResourceError) a run whose two models cannot fit (train/settings.py's estimate)."""
    from lmref.train.session import MEMORY_HINT

    need = training_bytes(vr.config, vr.run) + TRAIN_BYTES_PER_PARAM * param_count(vr.text_config)
    check_allocation(need, f"training {vr.config.name} ({param_count(vr.config):,} parameters) and its text-only "
                     f"baseline", force=options.force_memory, hint=MEMORY_HINT)


def train_captions(flags: dict, sizes: dict, extra: dict, options, d: Dist) -> dict:
    """Run a new vision run (the module docstring); returns its summary."""
    check_vision_options(flags, options, d)
    options = options.settled(None)
    vr = new_vision_run(flags, sizes, extra, options)
    _check_memory(vr, options)
    params = {k: v.astype(np.float32) for k, v in init_params(vr.config, vr.run.seed).items()}
    claim(vr.out, TRAIN_RUN_KIND)
    log = MetricsLog(vr.out / METRICS_FILE)
    try:
        autocast = bf16_default(d.device) if options.bf16 is None else options.bf16
        val = validation_batches(vr.tokenizer, vr.config.vision, vr.run.seed, vr.run.batch_size, options.eval_batches)
        return _phases(_Context(vr, options, log, val, d.device, autocast), params)
    finally:
        log.close()


@dataclass
class _Context:
    """What every phase of a running vision run shares."""

    vr: VisionRun
    options: object  # session.Options, settled
    log: MetricsLog
    val: list  # the validation batches
    device: torch.device
    autocast: bool
    losses: dict = dataclasses.field(default_factory=dict)  # the last validation loss of each phase

    def trainer(self, model: Transformer, stage: str, steps: int) -> PhaseTrainer:
        return phase_trainer(model, stage, self.vr.run, steps, self.vr.config, autocast=self.autocast)

    def stream(self, position: int = 0) -> CaptionStream:
        return CaptionStream(self.vr.tokenizer, self.vr.config.vision, self.vr.run.seed, self.vr.run.batch_size,
                             position)


def _phases(ctx: _Context, params: dict) -> dict:
    vr = ctx.vr
    _announce(ctx)
    pretrained, start = _text_phases(ctx, params)
    image = Transformer.from_canonical(vr.config, params | pretrained, device=ctx.device)
    last = _image_stages(ctx, image, start)
    summary = {"step": vr.stages.text_steps + vr.stages.projector_steps + vr.run.steps, "val_loss": ctx.losses[FULL],
               "baseline_val_loss": ctx.losses[BASELINE], "projector_val_loss": ctx.losses.get(PROJECTOR),
               "pretrain_val_loss": ctx.losses[PRETRAIN]}
    ctx.log({"kind": "summary", **summary})
    _plot(vr)
    return summary | {"out": str(vr.out), "plot": str(vr.out / PLOT_FILE), "checkpoint": str(last), "vision": True}


def _text_phases(ctx: _Context, params: dict) -> tuple[dict, int]:
    """The text model's phases: its pretraining, then the baseline.  Returns the decoder's
    params when the pretraining ended, and the scenes it read (where the stages start)."""
    vr = ctx.vr
    decoder = {k: a for k, a in params.items() if not k.startswith(("vision.", "projector."))}
    text = Transformer.from_canonical(vr.text_config, decoder, device=ctx.device)
    stream = ctx.stream()
    t = ctx.trainer(text, PRETRAIN, vr.stages.text_steps)
    ctx.losses[PRETRAIN] = _run_phase(ctx, t, stream, 0, TEXT, _validate(ctx, t, 0, TEXT))
    pretrained = text.to_canonical()  # copies: the baseline trains on
    t = ctx.trainer(text, BASELINE, vr.stages.projector_steps + vr.run.steps)
    ctx.losses[BASELINE] = _run_phase(ctx, t, ctx.stream(stream.position), vr.stages.text_steps, TEXT,
                                      ctx.losses[PRETRAIN])
    return pretrained, stream.position


def _image_stages(ctx: _Context, image: Transformer, start: int) -> Path:
    """Stage 1 and stage 2 of the image model from scene `start` on, each saved at its end;
    returns the last checkpoint."""
    p, s1 = ctx.vr.stages.text_steps, ctx.vr.stages.projector_steps
    stream = ctx.stream(start)
    t = ctx.trainer(image, PROJECTOR, s1)
    untrained = _validate(ctx, t, p, IMAGE)  # the random projector's, before stage 1
    if s1:
        ctx.losses[PROJECTOR] = _run_phase(ctx, t, stream, p, IMAGE, untrained)
        _save(ctx, t, p + s1, stream.position)
    t = ctx.trainer(image, FULL, ctx.vr.run.steps)
    ctx.losses[FULL] = _run_phase(ctx, t, stream, p + s1, IMAGE, math.nan)
    return _save(ctx, t, p + s1 + ctx.vr.run.steps, stream.position)


def _announce(ctx: _Context) -> None:
    """The run's first record and line."""
    vr = ctx.vr
    run, v, stages = vr.run, vr.config.vision, vr.stages
    total, decoder = param_count(vr.config), param_count(vr.text_config)
    ctx.log({"kind": "run", "step": 0, "arch": run.arch, "params": total, "decoder_params": decoder,
             "config": vr.config.to_dict(), "run": run.to_dict(), "stages": stages.to_dict(), "world_size": 1,
             "device": str(ctx.device), "bf16": ctx.autocast, "tokenizer": vr.tokenizer.info})
    print(f"lmref train: {run.arch} ({vr.config.name}, {total:,} params: decoder {decoder:,}, tower and projector "
          f"{total - decoder:,}; vocab {vr.config.vocab_size}, image placeholder {v.image_token_id}) on {ctx.device}, "
          f"bf16 autocast {'on' if ctx.autocast else 'off'}; {v.image_size}x{v.image_size} images, "
          f"{v.tokens_per_image} image tokens, sequences of {run.seq_len}; steps: text pretraining "
          f"{stages.text_steps}, stage 1 (projector) {stages.projector_steps}, stage 2 (everything) {run.steps}, "
          f"text-only baseline {stages.projector_steps + run.steps}; run directory {vr.out}", flush=True)


def _validate(ctx: _Context, t: PhaseTrainer, step: int, model: str) -> float:
    loss = evaluate(t, ctx.val)
    check_finite(step, {"val_loss": loss})
    ctx.log({"kind": "val", "model": model, "stage": t.stage, "step": step, "val_loss": loss})
    return loss


def _run_phase(ctx: _Context, t: PhaseTrainer, stream: CaptionStream, first: int, model: str, val_loss: float) -> float:
    """Train `t`'s phase to its end (steps first + 1 ..), validating every --eval-every steps and
    at the end; returns the last validation loss (`val_loss` when the phase has no step)."""
    from tqdm.auto import tqdm

    tokens = stream.batch_size * t.schedule.seq_len
    bar = tqdm(total=t.steps, unit="step", desc=f"{model} {t.stage}", dynamic_ncols=True,
               disable=not ctx.options.progress)
    while t.step < t.steps:
        begin = time.perf_counter()
        metrics = train_step(t, stream.next_batch())
        step = first + t.step
        check_finite(step, metrics)
        ctx.log({"kind": "train", "model": model, "stage": t.stage, "step": step, **metrics,
                 "samples": stream.position, "tokens_per_s": tokens / (time.perf_counter() - begin)})
        if step % ctx.options.eval_every == 0 or t.step == t.steps:
            val_loss = _validate(ctx, t, step, model)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", val=f"{val_loss:.3f}", refresh=False)
    bar.close()
    return val_loss


def _save(ctx: _Context, t: PhaseTrainer, step: int, position: int) -> Path:
    """The image model's checkpoint at the end of a stage, in the text runs' format."""
    vr = ctx.vr
    tensors, groups = optimizer_tensors(t.model, t.optimizer)
    state = {
        "step": step, "stage": t.stage,
        "data": {"source": SHAPES_DATA, "seed": vr.run.seed, "position": position},
        "run": vr.run.to_dict(), "stages": vr.stages.to_dict(), "tokenizer": vr.tokenizer.info,
        "optimizer": {"param_groups": groups},
        "options": {name: getattr(ctx.options, name) for name in ("eval_every", "eval_batches", "keep")},
        "world_size": 1, "torch_version": torch.__version__, "run_id": vr.run_id,
        "val_loss": ctx.losses[t.stage], "baseline_val_loss": ctx.losses[BASELINE],
    }
    snap = checkpoint.Snapshot(vr.config, t.model.to_canonical(), tensors, rng_state(ctx.device), state,
                               vr.tokenizer.files())
    saved = checkpoint.save(vr.out, snap, keep=ctx.options.keep)
    _plot(vr)
    return saved


def _plot(vr: VisionRun) -> None:
    title = f"{vr.run.arch}: {param_count(vr.config):,} parameters, {vr.config.vision.image_size}px shapes"
    plot_caption_losses(read_metrics(vr.out / METRICS_FILE), vr.out / PLOT_FILE, title=title)
