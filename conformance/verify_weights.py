"""A Hugging Face model directory read one layer at a time, for `lmref verify`.

    checkpoint = LayeredCheckpoint("path/to/hf_model")  # config.json + safetensors headers only
    checkpoint.config                                     # the ModelConfig (convert.config_from_hf)
    checkpoint.read("layers.3")                           # layer 3's canonical params, float64
    checkpoint.read_all()                                 # every canonical param (`convert.from_hf`'s)

Opening reads config.json and the safetensors headers (names, dtypes, shapes), nothing else,
and checks the names and shapes against the config as `convert.from_hf` does (the same key
normalisation: `convert.hf.hf_key`, the type's ignored buffers and a tied head's stored copy).
`read(group)` then reads only that group's tensors, one `safe_open(..., framework="numpy")`
lookup at a time, and turns each into its canonical tensors in float64 before the next is read
(`convert.layout.canonical_params` over a lazy mapping), so a caller that drops a group before
reading the next never holds more than one group of weights.  The groups, in computation order:

    embed       embed.* (the token table, learned positions, BLOOM's embedding norm)
    layers.{i}  every layers.{i}.* tensor (one decoder layer, its experts stacked)
    head        final_norm.* and lm_head.*, and embed.tokens again for a tied head

Sharded checkpoints (`model.safetensors.index.json`) are read shard by shard, with the checks
of `convert.safetensors_io`: shard names stay inside the directory, every key sits in the shard
the index names.  BF16 tensors are widened to float32 exactly (`safetensors_io`), then to
float64 like every other dtype.  Configs with an image pathway (LLaVA) are refused: the
verification runs a text prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from lmref.convert.errors import ConversionError
from lmref.convert.hf import config_from_hf, hf_key, layers_held, module_for, read_hf_config
from lmref.convert.layout import Entry, canonical_params, expected_shapes
from lmref.convert.safetensors_io import (
    FLOAT_DTYPES, StoredTensor, bf16_as_float32, read_hf_weights, tensor_headers, unreadable_dtype,
)
from lmref.spec.config import ModelConfig
from lmref.spec.params import layout_mismatches, param_shapes
from safetensors import SafetensorError, safe_open

EMBED, HEAD = "embed", "head"


def group_of(name: str) -> str:
    """The group of canonical parameter `name` (see the module docstring)."""
    if name.startswith("layers."):
        return "layers." + name.split(".")[1]
    return EMBED if name.startswith("embed.") else HEAD


def stored_tensors(directory: Path) -> dict[str, StoredTensor]:
    """Every tensor of an HF model directory, by its name in the files: one file or shards,
    with `convert.safetensors_io`'s checks, from the headers alone."""
    return read_hf_weights(directory, read_one=tensor_headers)


def load_float64(tensor: StoredTensor) -> np.ndarray:
    """One stored tensor's values in float64 (BF16 through its exact float32 widening);
    ConversionError for any other than a float dtype, as `lmref convert --from-hf` refuses it."""
    if tensor.dtype not in FLOAT_DTYPES:
        raise unreadable_dtype(tensor.path, tensor.key, tensor.dtype)
    try:
        if tensor.dtype == "BF16":
            return bf16_as_float32(tensor.path, tensor.key).astype(np.float64)
        with safe_open(str(tensor.path), framework="numpy") as f:
            return f.get_tensor(tensor.key).astype(np.float64)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{tensor.path}: cannot read {tensor.key} ({type(e).__name__}: {e})") from None


class _LazyTensors(Mapping):
    """HF key -> float64 array, read from the file when looked up (and held by nobody here)."""

    def __init__(self, stored: dict[str, StoredTensor]):
        self.stored = stored

    def __getitem__(self, key: str) -> np.ndarray:
        return load_float64(self.stored[key])

    def __iter__(self):
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)


class LayeredCheckpoint:
    """An HF model directory whose weights are read one group at a time (module docstring)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        data = read_hf_config(self.directory)
        where = str(self.directory / "config.json")
        self.config: ModelConfig = config_from_hf(data, self.directory.resolve().name, where,
                                                  layers_held(self.directory))
        if self.config.vision is not None:
            raise ConversionError(f"{where}: {data['model_type']} has an image pathway; lmref verify runs a text "
                                  "prompt through text-only models")
        self.module = module_for(self.config)
        self.shapes = param_shapes(self.config)
        table = self.module.entries(self.config)
        self.stored = self._normalised(stored_tensors(self.directory), {e.hf for e in table})
        problems = layout_mismatches(expected_shapes(table, self.shapes),
                                     {k: v.shape for k, v in self.stored.items()}, unit=" key(s)")
        if problems:
            raise ConversionError(f"{self.directory}: the weights do not match the config: " + " | ".join(problems))
        held = [*self.stored.values(), *([self._tied_copy] if self._tied_copy else [])]
        if odd := next((t for t in held if t.dtype not in FLOAT_DTYPES), None):  # on the headers, before any read
            raise unreadable_dtype(odd.path, odd.key, odd.dtype)
        self.groups: dict[str, list[Entry]] = {}
        for entry in table:
            self.groups.setdefault(group_of(entry.sources[0]), []).append(entry)

    def _normalised(self, stored: dict[str, StoredTensor], expected: set[str]) -> dict[str, StoredTensor]:
        """The file's names brought to the layout lmref writes, as `convert.hf._normalise_keys`
        does: the type's ignored buffers dropped, each name through `hf_key`, two names for one
        tensor refused, and a tied head's stored copy (the type's `HEAD`, else "lm_head.weight") set
        aside, checked equal to the embedding when the head is read."""
        out: dict[str, StoredTensor] = {}
        for key, tensor in stored.items():
            if key.endswith(self.module.IGNORED_SUFFIXES):
                continue
            renamed = hf_key(self.module, key, expected)
            if renamed in out:
                raise ConversionError(f"{self.directory}: {out[renamed].key!r} and {key!r} are both the tensor "
                                      f"{renamed!r}")
            out[renamed] = tensor
        head = getattr(self.module, "HEAD", "lm_head.weight")
        self._tied_copy = out.pop(head) if self.config.tie_embeddings and head in out else None
        return out

    def group_names(self) -> list[str]:
        """The groups in computation order: embed, layers.0 .. layers.{L-1}, head."""
        return [EMBED, *(f"layers.{i}" for i in range(self.config.n_layers)), HEAD]

    def read(self, group: str) -> dict[str, np.ndarray]:
        """The canonical float64 params of `group` (a tied head's group holds embed.tokens too)."""
        if group not in self.group_names():
            last = self.config.n_layers - 1
            raise KeyError(f"no parameter group {group!r}; groups: embed, layers.0 .. layers.{last}, head")
        table = self.groups.get(group, [])
        if group == HEAD and self.config.tie_embeddings:
            table = table + [e for e in self.groups[EMBED] if e.sources == ("embed.tokens",)]
        params = canonical_params(table, _LazyTensors({e.hf: self.stored[e.hf] for e in table}), self.shapes)
        if group == HEAD and self._tied_copy is not None:
            self._check_tied_copy(params["embed.tokens"])
        return params

    def _check_tied_copy(self, embedding: np.ndarray) -> None:
        """A stored copy of a tied head must equal the embedding (as `convert.from_hf` requires)."""
        if not np.array_equal(load_float64(self._tied_copy), embedding):
            raise ConversionError(f"{self.directory}: tie_word_embeddings is true but {self._tied_copy.key} differs "
                                  "from the token embedding")

    def read_all(self) -> dict[str, np.ndarray]:
        """Every canonical param in float64, in canonical order (what `convert.from_hf` gives, widened)."""
        params: dict[str, np.ndarray] = {}
        for group in self.group_names():
            params |= self.read(group)
        return {name: params[name] for name in self.shapes}
