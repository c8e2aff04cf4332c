"""Reading and writing safetensors weights with NumPy only (no torch, nothing pickled).

A Hugging Face model directory holds `model.safetensors`, or shards listed by
`model.safetensors.index.json` ({"weight_map": {key: shard file}}), as `save_pretrained`
writes them.  A shard's name must be a relative path inside the model directory (no absolute
path, no `..`: convert/paths.py); an index naming any other file is refused.  NumPy has no
bfloat16, so BF16 tensors (most hub LLaMA checkpoints) are read from the raw bytes and widened
to float32, which is exact: a bfloat16 is the top 16 bits of the float32 with the same value.
Every other dtype is returned as stored.  Files are written with the mode the umask gives.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lmref.convert.errors import ConversionError
from lmref.convert.paths import inside
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def bf16_as_float32(path: Path, name: str) -> np.ndarray:
    """A BF16 tensor of a safetensors file, widened exactly to float32.

    File layout (safetensors format spec): an 8-byte little-endian header length N, N bytes
    of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}}, then the data, with
    offsets counted from the end of the header.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(n))[name]
        begin, end = info["data_offsets"]
        f.seek(8 + n + begin)
        raw = np.frombuffer(f.read(end - begin), dtype="<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # the safetensors dtypes of the floats lmref reads
# What read_file returns: BF16 widened to float32, the rest as NumPy holds them (an integer weight
# is refused later, by name, with the params' checks: spec/params.py).
READ_DTYPES = (*FLOAT_DTYPES, "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL")


def unreadable_dtype(path: Path, name: str, dtype: str) -> ConversionError:
    """The error for a tensor of a dtype lmref does not read (F8_E4M3 of an FP8 checkpoint)."""
    return ConversionError(f"{path}: tensor {name} is {dtype}, which lmref does not read (it reads the floats "
                           f"{', '.join(FLOAT_DTYPES)}); dequantize first")


def read_file(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, as NumPy arrays (BF16 widened to float32);
    ConversionError naming a tensor of a dtype NumPy has no type for."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
            if odd := next((name for name, dtype in dtypes.items() if dtype not in READ_DTYPES), None):
                raise unreadable_dtype(path, odd, dtypes[odd])
            return {name: bf16_as_float32(path, name) if dtype == "BF16" else f.get_tensor(name)
                    for name, dtype in dtypes.items()}
    except ConversionError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor of a checkpoint is, from its file's header."""

    path: Path
    key: str  # the name in the file (before normalisation)
    dtype: str  # the safetensors dtype ("BF16", "F32", ...)
    shape: tuple[int, ...]


def tensor_headers(path: Path) -> dict[str, StoredTensor]:
    """The name, dtype and shape of every tensor of one safetensors file, no data read
    (read_hf_weights' `read_one`: a whole model directory's, its index's checks included)."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {name: StoredTensor(path, name, f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape()))
                    for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConversionError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def _read_sharded(directory: Path, read_one: Callable[[Path], dict]) -> dict:
    index_path = directory / INDEX_FILE
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except OSError as e:
        raise ConversionError(f"{index_path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, RecursionError, KeyError, TypeError) as e:  # not UTF-8 or not JSON; no weight_map
        raise ConversionError(f"{index_path}: not a safetensors index with a weight_map ({e})") from None
    if not isinstance(weight_map, dict):
        raise ConversionError(f"{index_path}: weight_map is not a JSON object")
    shards = {}
    for shard in weight_map.values():  # every name checked before any file is opened
        shards[shard] = inside(directory, shard, "shard", str(index_path), ConversionError, "model directory")
    tensors = {}
    for shard in sorted(shards):
        for name, value in read_one(shards[shard]).items():
            if weight_map.get(name) != shard:
                raise ConversionError(f"{directory / shard}: holds {name}, which {INDEX_FILE} "
                                      f"maps to {weight_map.get(name)!r}")
            tensors[name] = value
    absent = sorted(set(weight_map) - set(tensors))
    if absent:
        raise ConversionError(f"{index_path}: lists {len(absent)} key(s) that no shard holds: {', '.join(absent)}")
    return tensors


def read_hf_weights(directory: Path, read_one: Callable[[Path], dict] = read_file) -> dict:
    """The state dict of an HF model directory: one file or shards with an index.  `read_one`
    reads one file ({name: value}): its tensors by default; `lmref verify` reads the headers
    only (conformance/verify_weights.py)."""
    if (directory / SINGLE_FILE).is_file():
        return read_one(directory / SINGLE_FILE)
    if (directory / INDEX_FILE).is_file():
        return _read_sharded(directory, read_one)
    pickled = [p.name for p in directory.glob("*.bin")]
    hint = f"; {', '.join(pickled)} are pickled and never loaded (re-save with safe_serialization)" if pickled else ""
    raise ConversionError(f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}{hint}")


def write_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file; OSError when it cannot be written (safetensors raises its own error for
    a full disk)."""
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    except SafetensorError as e:
        raise OSError(f"{path}: cannot be written ({e})") from None
    as_umask_allows(path)


def as_umask_allows(path: Path) -> None:
    """Give a file safetensors wrote the mode any other new file gets (0644 under the usual umask
    022): safetensors 0.8 writes through a private temporary file and keeps its mode 0600, which
    an engine running as another user cannot read."""
    mask = os.umask(0)  # the only way to read the umask: set it and put it back
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
