"""Casting weights to the dtype a conversion writes (`--dtype`), refusing a value it cannot hold.

NumPy casts a float64 or float32 value beyond the target's range to inf, with at most a
RuntimeWarning: a model written that way computes inf and NaN.  `cast_weights` refuses such a
cast instead, naming the tensor and its largest magnitude, before anything is written.
(NumPy has no bfloat16, so lmref never writes one; a BF16 file is read widened to float32,
exactly: convert/safetensors_io.py.)
"""

from __future__ import annotations

import numpy as np

from lmref.convert.errors import ConversionError

WRITABLE = ("float64", "float32", "float16")


def cast_weights(tensors: dict[str, np.ndarray], dtype: str | None) -> dict[str, np.ndarray]:
    """`tensors` cast to `dtype` (None: unchanged); ConversionError naming the first tensor
    holding a finite value that `dtype` cannot represent (it would become inf)."""
    if dtype is None:
        return tensors
    if dtype not in WRITABLE:
        raise ConversionError(f"dtype {dtype!r} is not one lmref writes ({', '.join(WRITABLE)})")
    return {name: cast_tensor(name, value, np.dtype(dtype)) for name, value in tensors.items()}


def cast_tensor(name: str, value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`value` as `dtype`; ConversionError naming `name` when a finite value overflows."""
    with np.errstate(over="ignore"):  # an overflow is refused below, with the tensor's name
        cast = np.asarray(value).astype(dtype)
    if dtype.itemsize < np.asarray(value).dtype.itemsize and _overflowed(value, cast):
        largest = float(np.max(np.abs(value[np.isfinite(value)])))
        raise ConversionError(
            f"tensor {name!r} does not fit {dtype.name}: its largest magnitude is {largest:.6g}, above "
            f"{dtype.name}'s largest finite value {float(np.finfo(dtype).max):.6g}, so it would become inf "
            "(choose a wider dtype)")
    return cast


def _overflowed(value: np.ndarray, cast: np.ndarray) -> bool:
    """Whether a finite value of `value` became infinite in `cast`."""
    return bool(np.any(np.isinf(cast) & np.isfinite(value)))
