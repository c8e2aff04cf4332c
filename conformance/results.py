"""What an adapter's results must be before they are compared (conformance/adapters.py calls
these on every result): float arrays of the expected shape with finite values, one finite
number for a loss, {name: float array} for a capture.  Anything else is an AdapterResultError,
which the suite reports as a FAIL naming what came back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


class AdapterResultError(Exception):
    """The adapter returned something that is not a valid result (a FAIL)."""


def raised(e: BaseException) -> str:
    """'TypeName: its message' of an exception an adapter raised; an exception whose own str()
    raises is still named by its type."""
    try:
        text = str(e)
    except Exception as inner:  # noqa: BLE001  (the adapter's __str__: anything)
        text = f"(its str() raised {type(inner).__name__})"
    return f"{type(e).__name__}: {text}"


@dataclass(frozen=True)
class Output:
    """A validated result: `value` is a float64 copy, `dtype` the name of the returned dtype
    ("float32", "bfloat16", ...; "" when the returned object had no dtype, e.g. a Python float)."""

    value: np.ndarray
    dtype: str


def name_of_dtype(dtype: object) -> str:
    """'float32' for np.float32, 'f4', torch.float32 or jnp.float32."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype).removeprefix("torch.")


def dtype_name(value: object) -> str:
    """The dtype name of a NumPy / JAX / torch result; '' when `value` has no dtype."""
    dtype = getattr(value, "dtype", None)
    return "" if dtype is None else name_of_dtype(dtype)


def _is_float(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 / float8 types are not np.floating subtypes; their names say what they are.
    return np.issubdtype(dtype, np.floating) or dtype.name.startswith(("bfloat", "float"))


def _non_finite_message(what: str, values: np.ndarray) -> str | None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    n_nan = int(np.isnan(values).sum())
    first = [int(i) for i in np.argwhere(bad)[0]]
    return (f"{what} returned {int(bad.sum())} non-finite values of {values.size} "
            f"({n_nan} NaN, {int(bad.sum()) - n_nan} inf); first at index {first}")


def as_float_array(value: object, what: str) -> Output:
    """Convert a result with np.asarray; raise AdapterResultError unless it is a float array."""
    if value is None:
        raise AdapterResultError(f"{what} returned None; expected a floating-point array")
    try:
        array = np.asarray(value)
    except Exception as e:
        raise AdapterResultError(
            f"{what} returned a {type(value).__name__} that np.asarray cannot convert ({type(e).__name__}: {e}); "
            "return a NumPy array (e.g. tensor.float().cpu().numpy()) and declare the adapter's dtype"
        ) from None
    if not _is_float(array.dtype):
        described = f"dtype {array.dtype}, shape {array.shape}"
        got = f"an array ({described})" if isinstance(value, np.ndarray) else \
            f"a {type(value).__name__} ({described} as an array)"
        raise AdapterResultError(f"{what} returned {got}; expected a floating-point array")
    return Output(array.astype(np.float64), dtype_name(value))


def validate_array(value: object, what: str, expected_shape: tuple[int, ...], shape_doc: str) -> Output:
    """A float array of `expected_shape` with only finite values, or AdapterResultError saying why not."""
    out = as_float_array(value, what)
    if out.value.shape != tuple(expected_shape):
        raise AdapterResultError(
            f"{what} returned shape {out.value.shape}, expected {tuple(expected_shape)} {shape_doc}"
        )
    problem = _non_finite_message(what, out.value)
    if problem:
        raise AdapterResultError(problem)
    return out


def validate_scalar(value: object, what: str) -> Output:
    """One finite float (a 0-d or one-element array counts), or AdapterResultError."""
    out = as_float_array(value, what)
    if out.value.size != 1:
        raise AdapterResultError(f"{what} returned shape {out.value.shape}, expected a single number")
    problem = _non_finite_message(what, out.value.reshape(-1))
    if problem:
        raise AdapterResultError(problem)
    return Output(out.value.reshape(()), out.dtype)


def validate_captures(value: object, what: str) -> dict[str, Output]:
    """{name: float array}; shapes and values are judged later, against the golden."""
    if not isinstance(value, Mapping):
        raise AdapterResultError(f"{what} returned a {type(value).__name__}, expected a dict {{name: array}}")
    captured = {}
    for name, array in value.items():
        if not isinstance(name, str):
            raise AdapterResultError(f"{what} returned a key {name!r} of type {type(name).__name__}; names are str")
        captured[name] = as_float_array(array, f"{what}[{name!r}]")
    return captured
