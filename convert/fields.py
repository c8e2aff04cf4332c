"""Config mapping rules shared by the model types: strict reading of a Hugging Face config.json,
and the check that a `ModelConfig` is something a transformers class can express.

The rule in both directions: a value that changes the numbers is either mapped, or checked
against the one value the other side can represent; anything else raises `ConversionError`
naming the field.  Only fields that never change a forward pass are ignored, by name.
"""

from __future__ import annotations

import dataclasses
import math

from lmref.convert.errors import ConversionError
from lmref.spec.config import ModelConfig

# Keys of any transformers config that never change a forward pass: bookkeeping, token ids
# (they matter to generation and tokenizers, not to logits), dtype (the weights' dtype is the
# safetensors file's), outputs requested, initialisation, and the label maps of task heads.
GENERIC_IGNORED = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "auto_map",
    "dtype", "torch_dtype", "use_cache", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
    "problem_type", "chunk_size_feed_forward", "is_encoder_decoder", "tokenizer_class",
    "task_specific_params", "lmref_name",
})

# transformers `activations.ACT2CLS`: gelu is the exact erf GELU; gelu_new and
# gelu_pytorch_tanh are the same tanh approximation (Python ops vs the C kernel); swish is silu.
ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "silu": "silu", "swish": "silu", "relu": "relu", "quick_gelu": "quick_gelu"}
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu", "relu": "relu", "quick_gelu": "quick_gelu"}
# The activation features (spec/features.py) of every type that reads `hidden_act` (ACT2FN).
ACTIVATION_FEATURES = tuple(f"activation.{name}" for name in ACTIVATION_TO_HF)

# The fields that count a model's layers (transformers' names across the model types).  A count
# above what the weights hold is refused when read, before a converter builds a per-layer list
# of that length (layer_types, the MoE pattern): 10**12 layers would exhaust memory first.
LAYER_COUNTS = frozenset({"num_hidden_layers", "n_layer", "n_layers"})
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.default is not dataclasses.MISSING}


class HFConfig:
    """A config.json dict read field by field; `finish()` refuses every field nobody read.

    `where` prefixes every message (e.g. "path/config.json (llama)"); `prefix` names a nested
    dict's fields ("attn_config.qk_ln").
    """

    def __init__(self, data: dict, where: str, ignored: frozenset = frozenset(), prefix: str = "",
                 layers_held: int | None = None):
        if not isinstance(data, dict):
            raise ConversionError(f"{where}: {prefix.rstrip('.') or 'config'} must be a JSON object, got {data!r}")
        self.data, self.where, self.prefix = data, where, prefix
        self.read: set[str] = set(GENERIC_IGNORED | ignored)
        self.layers_held = layers_held  # the most layers the weights can hold (None: not known)

    def get(self, key: str, default=None):
        """The value of `key` (`default` when absent; a JSON null stays None)."""
        self.read.add(key)
        return self.data.get(key, default)

    def fail(self, key: str, value: object, why: str) -> None:
        raise ConversionError(f"{self.where}: {self.prefix}{key}={value!r} is not supported: {why}")

    def require(self, key: str, default: object, allowed: tuple, why: str) -> object:
        """The value of `key`, which must be one of `allowed`; otherwise fail with `why`."""
        value = self.get(key, default)
        if value not in allowed:
            self.fail(key, value, why)
        return value

    def flag(self, key: str, default: bool) -> bool:
        """The value of `key` (`default` when absent): JSON true or false, or ConversionError
        naming the field.  Never a truth value: "false" (a string) is true to Python, and
        transformers 5.x refuses it (StrictDataclassFieldValidationError)."""
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, value, "expected true or false")
        return value

    def number(self, key: str, default: float) -> float:
        """The value of `key` as a float (`default` when absent): a finite JSON number, or
        ConversionError naming the field."""
        return self.checked_number(key, self.get(key, default))

    def checked_number(self, name: str, value: object) -> float:
        """`value`, the field `name` (perhaps inside a dict: "rope_parameters.factor"), as a
        float; ConversionError naming the field for null, a string, a list, a boolean, NaN or
        an infinity."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(name, value, "expected a finite number")
        return float(value)

    def checked_integer(self, name: str, value: object) -> int:
        """`value`, the field `name`, as an int (8192.0 is 8192); ConversionError naming the
        field for anything else, 1.5 included (transformers would compute with 1.5)."""
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, value, "expected an integer")
        return value

    def positive_integer(self, key: str, default: object) -> int:
        """The value of `key` (`default` when absent): a size, count or length the model is built
        from, which must be a positive integer (`checked_positive`)."""
        return self.checked_positive(key, self.get(key, default))

    def optional_positive_integer(self, key: str, default: object = None) -> int | None:
        """`positive_integer`, or None for a null (or absent with a None default): the fields whose
        null the transformers class derives (num_key_value_heads, head_dim, n_inner, sliding_window)."""
        value = self.get(key, default)
        return None if value is None else self.checked_positive(key, value)

    def positive_either(self, keys: tuple[str, ...], default: object) -> int:
        """`either` of `keys`, a positive integer; a failure names the key the file spells."""
        name = next((key for key in keys if key in self.data), keys[0])
        return self.checked_positive(name, self.either(keys, default))

    def checked_positive(self, name: str, value: object, why: str = "") -> int:
        """`value`, the field `name`, a positive int; ConversionError naming the field for anything
        else: null, a string, a boolean, 0, a negative number, or a float (64.0 too: transformers
        5.x refuses it for an int field, and 4.x fails building nn.Linear(64.0, ...)).  Read before
        any arithmetic uses it, so a bad size never reaches `d // n_heads`.  `why`, if given, follows
        in parentheses."""
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.fail(name, value, f"expected a positive integer ({why})" if why else "expected a positive integer")
        if name in LAYER_COUNTS and self.layers_held is not None and value > self.layers_held:
            self.fail(name, value, f"the weights hold {self.layers_held} layer(s) at most")  # before any per-layer list
        return value

    def either(self, keys: tuple[str, ...], default=None):
        """The value of a field transformers spells several ways (a config class's
        `attribute_map`: Qwen3-MoE's `num_experts` is saved as `num_local_experts`); the file
        may hold any of them, and must not hold two that disagree."""
        given = {key: self.get(key) for key in keys if key in self.data}
        if len(set(map(repr, given.values()))) > 1:
            key, *others = given
            self.fail(key, given[key], "the same field as " + ", ".join(f"{k}={given[k]!r}" for k in others))
        return next(iter(given.values()), default)

    def sub(self, key: str, ignored: frozenset = frozenset()) -> HFConfig:
        """A nested dict (MPT's attn_config), read with the same rules; {} when absent or null."""
        return HFConfig(self.get(key) or {}, self.where, ignored, prefix=f"{self.prefix}{key}.",
                        layers_held=self.layers_held)

    def activation(self, key: str, default: str) -> str:
        name = self.get(key, default)
        if not isinstance(name, str) or name not in ACTIVATION_FROM_HF:
            self.fail(key, name, f"lmref maps only {', '.join(sorted(ACTIVATION_FROM_HF))}")
        return ACTIVATION_FROM_HF[name]

    def finish(self) -> None:
        """Raise ConversionError naming every field that was neither read nor known to be harmless."""
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            raise ConversionError(
                f"{self.where}: unknown field(s) {', '.join(self.prefix + k for k in unknown)}: lmref does not "
                "know whether they change the numbers, so it does not convert this config"
            )


# Fields every model type maps (convert/hf.py `hf_config`): hf_model_type is config.json's
# model_type, name its lmref_name.
COMMON_MAPPED = frozenset({"hf_model_type", "name"})


def check_expressible(config: ModelConfig, model_type: str, mapped: set[str], fixed: dict[str, object],
                      rules: list[tuple[str, bool, str]]) -> None:
    """Raise ConversionError unless transformers' `model_type` can express `config`.

    `mapped`: fields written into the HF config (besides COMMON_MAPPED).  `fixed`: fields
    whose value the HF class hard-codes.  Every other field must keep its `ModelConfig`
    default (the knob is off); sub-configs too: `moe` must be None unless the type maps it
    (a mixture of experts checks its fields with convert/moe.py `moe_rules`).  `rules`:
    (field, holds, rule) for relations between fields.
    """
    problems = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in mapped or f.name in COMMON_MAPPED:
            continue
        want = fixed.get(f.name, _DEFAULTS.get(f.name))
        if getattr(config, f.name) != want:
            problems.append(f"{f.name}={getattr(config, f.name)!r} (transformers' {model_type} has {want!r})")
    problems += [f"{name}: {rule}" for name, holds, rule in rules if not holds]
    if problems:
        raise ConversionError(
            f"config {config.name!r} cannot be expressed as transformers' {model_type}: " + "; ".join(problems)
        )


def activation_rule(config: ModelConfig) -> tuple[str, bool, str]:
    return ("activation", config.activation in ACTIVATION_TO_HF,
            f"{config.activation!r} has no transformers name; known: {', '.join(ACTIVATION_TO_HF)}")
