"""What a training run is: `RunSettings` (everything that shapes the loss trajectory, saved in
every checkpoint) and the model config built from a preset and size flags.

`--resume` continues a run exactly as it was started: its settings come from the checkpoint,
and a flag given on the command line that disagrees with them is an error naming both
values (start a new run in another --out to change one).  How the work is spread (processes,
--grad-accum, --fsdp, the device, bf16) is not part of the settings: it may change between
a run and its resumption, which is then exact up to float reduction order only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lmref.spec.config import ModelConfig
from lmref.spec.params import param_count
from lmref.spec.presets import FAMILIES, PRESETS, tiny
from lmref.train.errors import TrainError

SIZE_FIELDS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len")
# One seed rule for `lmref train`, `generate` and `shapes`: torch.Generator.manual_seed (generate's
# sampling) takes 0 .. 2**64 - 1, so every command takes those and no others.
SEED_LIMIT = 2**64
# --vocab-size's upper bound: four times the largest vocabularies of real models (Gemma 3's
# 262,144).  The `tokenizers` trainer reserves memory for the size asked before it merges (a
# few bytes an id up to here; 2**31 - 1 asked 264 GiB at once and aborted the process).
MAX_VOCAB_SIZE = 2**20


def check_seed(seed: int, flag: str = "--seed") -> None:
    """TrainError unless `seed` is an integer in 0 .. 2**64 - 1 (SEED_LIMIT), every command's rule."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise TrainError(f"{flag} must be an integer from 0 to 2**64 - 1, got {seed!r}")


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The settings that fix a run's trajectory (with the model config and the corpus)."""

    arch: str
    data: str = "pydoc_data"  # a file path, or "pydoc_data" for the embedded corpus
    tokenizer: str = "byte"  # "byte" or "bpe"
    vocab_size: int | None = None  # requested BPE size (the byte tokenizer has 256)
    seq_len: int = 128
    batch_size: int = 16  # sequences per optimizer step, over all processes and micro-batches
    steps: int = 300
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # the end of the cosine decay
    warmup: int = 30  # linear warmup steps, from lr / warmup to lr
    weight_decay: float = 0.1  # AdamW decoupled decay, matrices only (not norms, biases)
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    clip: float = 1.0  # max global gradient norm; 0 disables clipping
    seed: int = 0  # init_params seed and data order
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise TrainError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise TrainError(f"--warmup must be >= 0, got {self.warmup}")
        check_seed(self.seed)
        self._check_optimizer()
        if not 0 < self.val_fraction < 1:  # also NaN
            raise TrainError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.tokenizer not in ("byte", "bpe"):
            raise TrainError(f"--tokenizer must be 'byte' or 'bpe', got {self.tokenizer!r}")
        if self.tokenizer == "bpe" and self.vocab_size is None:
            raise TrainError("--tokenizer bpe needs --vocab-size N (the BPE vocabulary size, > 256); "
                             "--vocab-size is missing")
        if self.tokenizer == "byte" and self.vocab_size is not None:
            raise TrainError(f"--vocab-size {self.vocab_size} goes with --tokenizer bpe (the byte tokenizer has "
                             "256 ids); give --tokenizer bpe or drop --vocab-size")
        if self.vocab_size is not None and not 256 < self.vocab_size <= MAX_VOCAB_SIZE:
            raise TrainError(f"--vocab-size must exceed 256 (the byte alphabet a byte-level BPE starts from) and be "
                             f"at most {MAX_VOCAB_SIZE:,} (2**20, four times the largest real vocabularies), "
                             f"got {self.vocab_size}")

    def _check_optimizer(self) -> None:
        """Every AdamW and schedule number, with the rule it breaks: a NaN or infinite one would
        train NaN weights without a word, and torch's own checks are tracebacks."""
        if not _finite(self.lr) or self.lr <= 0:
            raise TrainError(f"--lr must be a finite number > 0, got {self.lr}")
        if not _finite(self.min_lr) or not 0 < self.min_lr <= self.lr:
            raise TrainError(f"need 0 < --min-lr ({self.min_lr}) <= --lr ({self.lr}), both finite")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not _finite(value) or not 0 <= value < 1:
                raise TrainError(f"--{name} must be in [0, 1) (AdamW's moment decay), got {value}")
        if not _finite(self.adam_eps) or self.adam_eps <= 0:
            raise TrainError(f"--adam-eps must be a finite number > 0, got {self.adam_eps}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise TrainError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if not _finite(self.clip) or self.clip < 0:
            raise TrainError(f"--clip must be a finite number >= 0 (0: no clipping), got {self.clip}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"unknown run setting(s): {', '.join(unknown)}")
        for field in dataclasses.fields(cls):
            if field.name in data and not _of_type(data[field.name], field.type):
                raise TrainError(f"run.{field.name} must be {_TYPE_NAMES[field.type]}, got {data[field.name]!r}")
        return cls(**data)


# RunSettings' field annotations (strings: `from __future__ import annotations`), as a message says them.
_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "int | None": "an integer or null"}


def _of_type(value: object, annotation: str) -> bool:
    """Whether a JSON value read from trainer_state.json is of a RunSettings field's type."""
    if annotation == "int | None" and value is None:
        return True
    if annotation in ("int", "int | None"):
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _finite(value: object) -> bool:
    """A real number (int or float, not bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def family_preset(arch: str | None) -> str | None:
    """The preset a family name trains: its first, when every preset of the family is the same
    model at the training sizes (their `tiny()` configs agree but for the name and the MLP
    width, which the size flags set: llava-1.5-7b and -13b).  Anything else is returned as is,
    and `check_arch` names a family whose presets differ (mixtral's expert widths, gemma's
    attention kinds) and lists them."""
    if arch not in FAMILIES:
        return arch
    first, *others = FAMILIES[arch]
    same = lambda name: dataclasses.replace(tiny(name), name="", d_ff=1)  # noqa: E731
    return first if all(same(other) == same(first) for other in others) else arch


def check_arch(arch: str) -> str:
    """`arch` when it is a preset id; a family (`mixtral`) names the presets to choose from."""
    if arch in FAMILIES:
        raise TrainError(f"--arch {arch!r} is a family of {len(FAMILIES[arch])} presets that differ at the training "
                         f"sizes; train one of them: {', '.join(FAMILIES[arch])}")
    if arch not in PRESETS:
        raise TrainError(f"--arch {arch!r}: unknown preset; known presets: {', '.join(sorted(PRESETS))}")
    return arch


def saved_arch_problem(arch: object, config: ModelConfig) -> str | None:
    """Why a checkpoint's run.arch does not go with its config.json (None when it does):
    `lmref train` names the model of `--arch A` tiny(A).name."""
    if not isinstance(arch, str) or arch not in PRESETS:
        return f"run.arch {arch!r} is not a preset of this lmref"
    trains = tiny(arch).name
    if config.name != trains:
        return f"run.arch {arch!r} trains {trains}, config.json holds {config.name}"
    return None


def new_settings(flags: dict[str, Any]) -> RunSettings:
    """Settings of a new run: the flags given (not None) over the defaults."""
    if flags.get("arch") is None:
        raise TrainError(f"--arch is required for a new run (known presets: {', '.join(sorted(PRESETS))}); "
                         "or --resume a checkpoint")
    check_arch(flags["arch"])
    given = {k: v for k, v in flags.items() if v is not None}
    if "lr" in given and "min_lr" not in given:
        given["min_lr"] = given["lr"] / 10
    return RunSettings(**given)


def resumed_settings(saved: RunSettings, flags: dict[str, Any], where: str) -> RunSettings:
    """`saved`, after checking that every flag given agrees with it."""
    arch = flags.get("arch")
    if arch is not None and arch != saved.arch:
        check_arch(arch)
        raise TrainError(f"--resume {where}: the checkpoint is a {saved.arch!r} run, so it cannot continue "
                         f"as --arch {arch!r} (another architecture); drop --arch or start a new run")
    for name, value in flags.items():
        if name not in ("arch", "data") and value is not None and value != getattr(saved, name):
            raise TrainError(f"--resume {where}: --{_flag(name)} {value} differs from the checkpoint's "
                             f"{getattr(saved, name)}; a resumed run keeps its settings (start a new run "
                             "in another --out to change them)")
    return saved


def check_sizes(config: ModelConfig, sizes: dict[str, int | None], where: str) -> None:
    """Raise unless every size flag given equals the checkpoint's config."""
    for name, value in sizes.items():
        if value is not None and value != getattr(config, name):
            raise TrainError(f"--resume {where}: --{_flag(name)} {value} differs from the checkpoint's "
                             f"{name} {getattr(config, name)} (another architecture)")


def model_config(arch: str, sizes: dict[str, int | None], vocab_size: int) -> ModelConfig:
    """tiny(arch) (every flag of the preset, small sizes) with the size flags given, and the
    tokenizer's vocabulary.  Sizes not given follow the ones given: head_dim = d_model //
    n_heads, d_model = n_heads * head_dim, d_ff keeps the preset's d_ff / d_model ratio and
    n_kv_heads tiny's query heads per KV head (`kv_heads_for`)."""
    small = tiny(check_arch(arch))
    base = PRESETS[arch]
    given = {k: v for k, v in sizes.items() if v is not None}
    for name, value in given.items():  # before the sizes derived from them name another field
        if value < 1:
            raise TrainError(f"--{_flag(name)} must be >= 1, got {value}")
    n_heads = given.get("n_heads", small.n_heads)
    if "d_model" in given and "head_dim" not in given and given["d_model"] % n_heads:
        raise TrainError(f"--d-model {given['d_model']} is not divisible by the {n_heads} heads; "
                         "give --n-heads or --head-dim")
    head_dim = given.get("head_dim", given["d_model"] // n_heads if "d_model" in given else small.head_dim)
    d_model = given.get("d_model", n_heads * head_dim)
    changes = dict(
        n_heads=n_heads, head_dim=head_dim, d_model=d_model,
        n_kv_heads=given.get("n_kv_heads", kv_heads_for(n_heads, small.n_heads // small.n_kv_heads)),
        d_ff=given.get("d_ff", round(d_model * base.d_ff / base.d_model)),
        n_layers=given.get("n_layers", small.n_layers),
        max_seq_len=given.get("max_seq_len", small.max_seq_len),
    )
    return tiny(arch, vocab_size=vocab_size, **changes)


def kv_heads_for(n_heads: int, group: int) -> int:
    """The KV heads of `n_heads` query heads in groups of `group` (tiny's query heads per KV
    head): n_heads / group where it divides, else the most KV heads below that which divide
    n_heads (a whole number of query heads each; 1 at least, multi-query attention)."""
    most = max(1, n_heads // group)
    return next(k for k in range(most, 0, -1) if n_heads % k == 0)


def check_fits(config: ModelConfig, run: RunSettings) -> None:
    if run.seq_len > config.max_seq_len:
        raise TrainError(f"--seq-len {run.seq_len} exceeds the model's context max_seq_len "
                         f"{config.max_seq_len} (raise --max-seq-len)")


# Bytes per parameter while training: the canonical float32 copy the run starts from, the
# module's float32 weights, their gradients and AdamW's two moments (4 + 4 + 4 + 8).  A new run
# also holds init_params' float64 draw while it casts it.
TRAIN_BYTES_PER_PARAM = 20
INIT_BYTES_PER_PARAM = 8


def training_bytes(config: ModelConfig, run: RunSettings, *, processes: int = 1, accum: int = 1,
                   fresh: bool = True) -> int:
    """About the most memory one process of this run allocates (an estimate that errs large):
    the parameters and optimizer state (TRAIN_BYTES_PER_PARAM each, and the float64 init of a
    new run), and the float32 activations backward keeps for one micro-batch: per layer and
    token ~16 d_model + 4 f values (f: the widest MLP a token runs through, `_ffn_width`) and
    two attention rows per head, and three vocabulary-wide rows (logits, their float32 copy,
    the softmax gradient) per token."""
    per_param = TRAIN_BYTES_PER_PARAM + (INIT_BYTES_PER_PARAM if fresh else 0)
    tokens = max(1, run.batch_size // max(1, processes * accum)) * run.seq_len
    per_token = (config.n_layers * (16 * config.d_model + 4 * _ffn_width(config) + 2 * config.n_heads * run.seq_len)
                 + 3 * config.vocab_size)
    return param_count(config) * per_param + 4 * tokens * per_token


def _ffn_width(config: ModelConfig) -> int:
    """The hidden width one token's MLP computes in the widest layer: d_ff for a dense layer;
    its k experts, its shared expert and its E router logits for a "moe" layer."""
    widths = [config.d_ff if kind == "dense" else config.moe.n_experts_per_token * config.expert_d_ff
              + config.shared_expert_d_ff + config.moe.n_experts for kind in set(config.layer_mlp_kinds)]
    return max(widths)
