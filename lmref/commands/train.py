"""`lmref train`, `lmref generate` and `lmref shapes`: argparse wiring (lmref/cli.py registers them with
`add_commands`).  Nothing heavy is imported until a command runs."""

from __future__ import annotations

import argparse
import decimal

from lmref.commands.errors import fail, interruptible, known_errors
from lmref.train.settings import SIZE_FIELDS as SIZE_FLAGS

FORCE_MEMORY = "--force-memory"  # the same flag on `lmref convert`


def integer(text: str) -> int:
    """An integer flag: "1000", or an integral number written as "1e9" (sizes are often given
    so), read exactly: "1e30" is 10**30, not the float nearest it."""
    try:
        value = decimal.Decimal(text.strip())
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not value.is_finite() or value != value.to_integral_value():
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    return int(value)


RUN_FLAGS = {  # RunSettings fields: (type, help); None (not given) means default / the checkpoint's
    "data": (str, "a UTF-8 text file (default: pydoc_data, CPython's embedded help texts)"),
    "tokenizer": (str, "byte (default, 256 ids) or bpe (trained on the corpus, saved with the checkpoint)"),
    "vocab_size": (int, "with --tokenizer bpe: the BPE vocabulary size (> 256)"),
    "seq_len": (int, "tokens per training sequence (default 128)"),
    "batch_size": (int, "sequences per optimizer step over all processes (default 16)"),
    "steps": (int, "optimizer steps (default 300)"),
    "lr": (float, "peak learning rate (default 3e-3)"),
    "min_lr": (float, "learning rate at the end of the cosine decay (default lr / 10)"),
    "warmup": (int, "linear warmup steps (default 30)"),
    "weight_decay": (float, "AdamW weight decay of the matrices (default 0.1)"),
    "beta1": (float, "AdamW beta1 (default 0.9)"),
    "beta2": (float, "AdamW beta2 (default 0.95)"),
    "adam_eps": (float, "AdamW epsilon (default 1e-8)"),
    "clip": (float, "max gradient norm, 0: no clipping (default 1.0)"),
    "seed": (int, "init and data-order seed (default 0)"),
    "val_fraction": (float, "the corpus's last fraction held out for validation (default 0.1)"),
}


VISION_FLAGS = {  # train/multimodal.py's tower sizes and stage steps (None: its defaults)
    "text_steps": "steps of the decoder's text-only pretraining on the captions (default 100)",
    "projector_steps": "steps of stage 1, the projector alone (default 100); --steps: stage 2 (default 200)",
    "image_size": "image side in pixels (default 24)",
    "patch_size": "patch side in pixels (default 4)",
    "vision_d_model": "the tower's width (default 64)",
    "vision_n_layers": "the tower's layers (default 3; the feature layer -2 reads the second to last)",
    "vision_n_heads": "the tower's heads (default width / 16)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model of a preset's architecture on a text corpus",
        description="Train tiny(ARCH) (every flag of the preset, small sizes; override them with the size "
                    "flags) on the embedded corpus or --data.  Several processes: torchrun --nproc_per_node=N "
                    "-m lmref train ...  A run directory holds metrics.jsonl, loss.png and step-N "
                    "checkpoints (see docs/training.md).")
    p.add_argument("--arch", help="preset id (`lmref presets` lists them); required unless --resume")
    for name, (kind, text) in RUN_FLAGS.items():
        p.add_argument(_flag(name), type=integer if kind is int else kind, help=text)
    sizes = p.add_argument_group("model size (default: tiny(ARCH); sizes not given follow the ones given)")
    for name in SIZE_FLAGS:
        sizes.add_argument(_flag(name), type=integer)
    vision = p.add_argument_group("a vision run (an arch with a vision tower, e.g. llava-1.5-7b: LLaVA's two stages "
                                  "beside a text-only baseline on embedded images; docs/training.md)")
    for name, text in VISION_FLAGS.items():
        vision.add_argument(_flag(name), type=integer, help=text)
    how = p.add_argument_group("how to run (may change on --resume; unset: the resumed run's values)")
    how.add_argument("--out", help="run directory (default: runs/ARCH for a new run, the checkpoint's run on "
                     "--resume): new or empty for a new run; on --resume the run's own, or a new or empty one")
    how.add_argument("--resume", metavar="DIR", help="continue the run in DIR (a run directory or a step-N checkpoint)")
    how.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    how.add_argument("--grad-accum", type=integer, help="micro-batches per process per step (default 1)")
    how.add_argument("--fsdp", action="store_true",
                     help="shard params, grads and optimizer state (FSDP2; needs torchrun)")
    how.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                     help="bfloat16 autocast (default: on for CUDA devices with bf16, off on the CPU)")
    how.add_argument("--compile", action="store_true", help="torch.compile the model")
    how.add_argument("--eval-every", type=integer, help="validate every N steps and at the end (default 50)")
    how.add_argument("--eval-batches", type=integer, help="validation batches per evaluation (default 4)")
    how.add_argument("--save-every", type=integer, help="checkpoint every N steps and at the end (default 100)")
    how.add_argument("--keep", type=integer, help="checkpoints kept (default 2)")
    how.add_argument("--stop-after", type=integer, metavar="STEP",
                     help="stop at step STEP with a checkpoint (resume later)")
    how.add_argument("--no-progress", action="store_true", help="no progress bar")
    how.add_argument(FORCE_MEMORY, action="store_true", help="train even when the estimated memory (parameters, "
                     "optimizer state, activations) exceeds the memory available (refused by default, with the "
                     "estimate)")
    p.set_defaults(run=cmd_train)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a training checkpoint (KV-cache decoding)",
                       description="Prefill the prompt, then sample one token at a time through the KV cache.")
    p.add_argument("--checkpoint", metavar="DIR", help="a run directory or one of its step-N checkpoints")
    p.add_argument("--onnx", metavar="OUT", help="generate with an exported graph in onnxruntime "
                   "(a directory of `lmref export`) instead of --checkpoint")
    p.add_argument("--prompt", help="the text to continue (required without --image; with it, the caption's "
                   "beginning, default empty)")
    p.add_argument("--image", metavar="FILE", help="a vision run's checkpoint: describe this image (an RGB file of "
                   "the model's image size, read with Pillow; `lmref shapes` writes some); the caption ends at its "
                   "end of line")
    p.add_argument("--max-new-tokens", type=integer, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0: greedy (default 0.8)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding (same as --temperature 0)")
    p.add_argument("--top-k", type=integer, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample among the most likely tokens holding probability p")
    p.add_argument("--seed", type=integer, help="sampling seed: the same seed gives the same text")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(run=cmd_generate)


def add_commands(sub) -> None:
    """Register `train`, `generate` and `shapes` on lmref's subparsers."""
    _add_train(sub)
    _add_generate(sub)
    _add_shapes(sub)


def _train_interrupted(args: argparse.Namespace) -> str:
    """What an interrupted run leaves: checkpoints to --resume from, but for a vision run, which
    cannot be resumed (train/multimodal.py)."""
    from lmref.train.multimodal import vision_arch
    from lmref.train.settings import family_preset

    if args.resume is None and vision_arch(family_preset(args.arch)):
        return ("the checkpoints written so far are kept whole; a vision run cannot be resumed: start it again "
                "with another --out")
    return ("the checkpoints written so far are kept whole: --resume the run directory to go on from its latest "
            "(stopped before the first one, start the run again)")


@interruptible("train", _train_interrupted)
def cmd_train(args: argparse.Namespace) -> int:
    from lmref.train.errors import DivergedError
    from lmref.train.session import Options, train

    from lmref.train.settings import family_preset

    flags = {name: getattr(args, name) for name in ("arch", *RUN_FLAGS)}
    if family_preset(args.arch) != args.arch:  # `--arch llava`: the family is one model at these sizes
        flags["arch"] = family_preset(args.arch)
        print(f"--arch {args.arch}: the family's presets are one model at the training sizes; training {flags['arch']}")
    sizes = {name: getattr(args, name) for name in SIZE_FLAGS}
    options = Options(
        out=args.out, resume=args.resume, device=args.device, fsdp=args.fsdp, bf16=args.bf16,
        compile=args.compile, stop_after=args.stop_after, progress=not args.no_progress,
        grad_accum=args.grad_accum, eval_every=args.eval_every, eval_batches=args.eval_batches,
        save_every=args.save_every, keep=args.keep, force_memory=args.force_memory)
    try:
        summary = train(flags, sizes, options, {name: getattr(args, name) for name in VISION_FLAGS})
    except DivergedError as e:  # the run failed (1), the input was fine
        return fail("train", e, status=1)
    except known_errors() as e:
        return fail("train", e)
    except MemoryError:
        return fail("train", MemoryError(f"out of memory (more than lmref's estimate, or {FORCE_MEMORY} was "
                                         "given); make the model or the batch smaller"), status=1)
    if summary.get("vision"):
        _print_vision_summary(summary)
    elif "checkpoint" in summary:  # rank 0
        print(f"step {summary['step']}: train loss {summary.get('loss', float('nan')):.4f}, {_val_loss(summary)} "
              f"(unigram baseline {summary['unigram_baseline']:.4f}), {summary.get('tokens_per_s', 0):,.0f} tokens/s"
              + (f", load-balancing loss {summary['aux']:.4f} (when balanced: k pooled, 1 per layer)"
                 if "aux" in summary else "")
              + (f", router z-loss {summary['z_loss']:.4f}" if "z_loss" in summary else "")
              + (f", logit z-loss {summary['logit_z_loss']:.4f}" if "logit_z_loss" in summary else ""))
        print(f"checkpoint {summary['checkpoint']}\nplot {summary['plot']}")
    return 0


def _val_loss(summary: dict) -> str:
    """The last validation, with its step where a --stop-after ended the session before the
    next one (none at all: a resumed session that stopped before its first)."""
    if "val_loss" not in summary:
        return "no validation in this session"
    step = summary["val_step"]
    return f"val loss {summary['val_loss']:.4f}" + (f" at step {step}" if step != summary["step"] else "")


def _print_vision_summary(summary: dict) -> None:
    """A vision run's end: both caption losses, the image model's first."""
    stage1 = summary["projector_val_loss"]
    print(f"step {summary['step']}: caption val loss {summary['val_loss']:.4f} with the image, "
          f"{summary['baseline_val_loss']:.4f} for the text-only baseline (the same decoder, captions and steps); "
          f"after the text pretraining {summary['pretrain_val_loss']:.4f}"
          + (f", after stage 1 {stage1:.4f}" if stage1 is not None else "") + " (nats per byte)")
    print(f"checkpoint {summary['checkpoint']}\nplot {summary['plot']}")


def _decoder(args: argparse.Namespace):
    """(decoder, tokenizer, generate function) of --checkpoint (the torch twin) or --onnx (the
    exported graph in onnxruntime): both decode with train/generate.py's sampling."""
    if args.onnx is not None:
        from lmref.export.generate import generate, load_onnx_generator

        return (*load_onnx_generator(args.onnx, args.device), generate)
    from lmref.train.generate import generate, load_generator

    model, tokenizer, _ = load_generator(args.checkpoint, args.device)
    return model, tokenizer, generate


def check_prompt(prompt: str) -> None:
    """TrainError unless `prompt` is text that UTF-8 can encode.  Python hands a command line's
    undecodable bytes over as lone surrogates (U+DC80..U+DCFF, PEP 383), which no tokenizer takes."""
    from lmref.train.errors import TrainError

    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(prompt[e.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"the lone surrogate U+{code:04X}"
        raise TrainError(f"--prompt is not UTF-8 text: {what} at character {e.start} is not part of a UTF-8 "
                         "character; give the prompt in UTF-8") from None


def _check_generate(args: argparse.Namespace) -> None:
    """TrainError for a generate command line that cannot run, before anything is loaded."""
    from lmref.train.errors import TrainError

    if (args.onnx is None) == (args.checkpoint is None):
        raise TrainError("give exactly one of --checkpoint DIR and --onnx OUT")
    if args.prompt is None and args.image is None:
        raise TrainError("--prompt is required (the text to continue), unless --image gives an image to describe")
    check_prompt(args.prompt or "")


def _describe(args: argparse.Namespace) -> tuple[str, str]:
    """(prompt, continuation) of --image: the image's placeholders, then --prompt, decoded to the
    caption's end, by the checkpoint's torch model or the exported graphs (the same sampling)."""
    from lmref.train.captions import CAPTION_END
    from lmref.train.generate import check_vision_model, image_prompt
    from lmref.train.images import read_image

    decoder, tokenizer, generate = _decoder(args)
    check_vision_model(decoder, str(args.onnx or args.checkpoint))
    pixels = read_image(args.image, decoder.config.vision)
    ids = generate(decoder, image_prompt(decoder, tokenizer, args.prompt or ""), args.max_new_tokens,
                   temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed, pixel_values=pixels, stop=int(tokenizer.encode(CAPTION_END)[0]))
    return args.prompt or "", tokenizer.decode(ids).removesuffix(CAPTION_END)


@interruptible("generate", "nothing was written")
def cmd_generate(args: argparse.Namespace) -> int:
    from lmref.train.errors import TrainError

    try:
        _check_generate(args)
    except TrainError as e:
        return fail("generate", e)
    try:
        if args.image is not None:
            prompt, text = _describe(args)
        else:
            decoder, tokenizer, generate = _decoder(args)
            ids = generate(decoder, [int(i) for i in tokenizer.encode(args.prompt)], args.max_new_tokens,
                           temperature=0.0 if args.greedy else args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed)
            prompt, text = args.prompt, tokenizer.decode(ids)
    except known_errors() as e:
        return fail("generate", e)
    print(prompt + text)
    return 0


def _add_shapes(sub) -> None:
    p = sub.add_parser("shapes", help="write scenes of the embedded image-caption set as PNG files",
                       description="Write scenes START .. START + COUNT - 1 of the shapes set (train/shapes.py, what "
                                   "vision runs train on) as OUT/scene-N.png with OUT/captions.tsv, and print each "
                                   "file and its caption.  A vision run trains on seed 0's scenes from 0 on.")
    p.add_argument("--out", required=True, help="the directory to write (new, empty, or one `lmref shapes` wrote)")
    p.add_argument("--count", type=integer, default=1, help="scenes to write (default 1)")
    p.add_argument("--seed", type=integer, default=1, help="the scenes' seed (default 1)")
    p.add_argument("--start", type=integer, default=0, help="the first scene's index (default 0)")
    p.add_argument("--image-size", type=integer, default=24, help="image side in pixels, 2 to 4096 (default 24, "
                   "a vision run's default)")
    p.set_defaults(run=cmd_shapes)


def _check_shapes(args: argparse.Namespace) -> None:
    """TrainError for a shapes command line out of range, before anything is written."""
    from lmref.train.errors import TrainError
    from lmref.train.images import MAX_IMAGE_SIZE, MAX_SCENES
    from lmref.train.settings import check_seed

    for flag, value, least, most in (("--count", args.count, 1, MAX_SCENES), ("--start", args.start, 0, None),
                                     ("--image-size", args.image_size, 2, MAX_IMAGE_SIZE)):
        if value < least:
            raise TrainError(f"{flag} must be >= {least}, got {value}")
        if most is not None and value > most:
            raise TrainError(f"{flag} must be <= {most}, got {value}")
    check_seed(args.seed)


@interruptible("shapes", "{out}/captions.tsv lists every scene written; run again to replace them")
def cmd_shapes(args: argparse.Namespace) -> int:
    from lmref.spec.outputs import claim
    from lmref.train.images import IMAGE_KIND, write_scenes

    try:
        _check_shapes(args)
        out = claim(args.out, IMAGE_KIND)
        written = write_scenes(out, args.seed, args.start, args.count, args.image_size)
    except known_errors() as e:
        return fail("shapes", e)
    for path, text in written:
        print(f"{path}\t{text}")
    return 0
