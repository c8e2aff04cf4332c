"""`lmref check`: judge logits that any program wrote to files, with the suite's own verdicts.

    DIR/<case>.npy            float [batch, seq, vocab] (float64, float32, float16; any float dtype
    DIR/<case>.safetensors    NumPy reads), one file per golden case of the arch, named as the case
                              (`prefill-b2-s7.npy`); a .safetensors holds one tensor, "logits"
                              (BF16 too, widened exactly to float32)

A prefill case's logits are those of one forward pass over `tokens`; a decode case's are those
of the decode (conformance/golden_export.py says how it runs).  Each file is judged by
`runner.run_check` through `FilesAdapter`, so the verdicts (PASS / FAIL / NOT SUPPORTED), the
tolerance row (the declared `--dtype`, float32 by default), the tightest row met and the
failure messages are the suite's own.  A case without a file is NOT SUPPORTED; a file whose
shape is not the case's is a `LogitsFileError` naming the file and the expected shape; NaN,
inf or an integer dtype is a FAIL (an invalid result), as in the suite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmref.conformance.adapters import Adapter, AdapterNotSupported
from lmref.conformance.results import Output, validate_array
from lmref.conformance.golden_export import capability
from lmref.conformance.runner import FAIL, CheckResult, run_check
from lmref.conformance.store import GoldenCase, GoldenStore
from lmref.conformance.tolerances import Tolerances
from lmref.convert.errors import ConversionError

SUFFIXES = (".npy", ".safetensors")
SAFETENSORS_NAME = "logits"


class LogitsFileError(ValueError):
    """A logits file that cannot be judged: unreadable, ambiguous, or of the wrong shape."""


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (numpy.lib.format)


def _read(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npy":
            with path.open("rb") as f:
                if f.read(len(NPY_MAGIC)) != NPY_MAGIC:  # np.load would call it pickled data, whatever it is
                    raise LogitsFileError(f"{path}: not a .npy file (it does not begin with NumPy's magic "
                                          "string; write it with numpy.save)")
            return np.load(path, allow_pickle=False)  # never pickle (DESIGN.md)
        from lmref.convert.safetensors_io import read_file

        tensors = read_file(path)  # BF16 (what a bfloat16 engine writes) widened exactly to float32
    except LogitsFileError:
        raise
    except ConversionError as e:
        raise LogitsFileError(str(e)) from None
    except Exception as e:  # NumPy and safetensors raise their own types on a malformed file
        raise LogitsFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if set(tensors) != {SAFETENSORS_NAME}:
        raise LogitsFileError(f"{path}: expected one tensor named {SAFETENSORS_NAME!r}, found {sorted(tensors)}")
    return tensors[SAFETENSORS_NAME]


def find_file(directory: Path, case: str) -> Path | None:
    """DIR/<case>.npy or DIR/<case>.safetensors; LogitsFileError when both exist, or when one of
    the names is something other than a file (a folder named so is not a missing file)."""
    for path in (directory / f"{case}{s}" for s in SUFFIXES):
        if path.is_symlink() and not path.exists():
            raise LogitsFileError(f"{path}: a link to {os.readlink(path)}, which does not exist")
        if path.exists() and not path.is_file():
            raise LogitsFileError(f"{path}: not a file; a case's logits are one .npy or .safetensors file")
    found = [directory / f"{case}{s}" for s in SUFFIXES if (directory / f"{case}{s}").is_file()]
    if len(found) > 1:
        raise LogitsFileError(f"{directory}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def read_logits(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray:
    """The array in `path`, or LogitsFileError naming the file and `expected_shape`."""
    array = _read(path)
    if tuple(array.shape) != tuple(expected_shape):
        raise LogitsFileError(f"{path}: shape {tuple(array.shape)}, expected {tuple(expected_shape)} "
                              "= [batch, seq, vocab] of the case")
    return array


class FilesAdapter(Adapter):
    """An Adapter whose results are the arrays read from files, one per case name."""

    def __init__(self, directory: Path, logits: dict[str, np.ndarray], dtype: str | None):
        self.impl, self.spec = None, f"files:{directory}"
        self.name, self.version, self.dtype = f"logits files in {directory}", "files", dtype
        self.directory, self.logits = directory, logits

    def supports(self, capability_name: str) -> bool:
        return capability_name in ("forward", "decode")

    def row_phrase(self) -> str:
        return "declared with --dtype" if self.dtype else "the default: no --dtype given"

    def call_case(self, capability_name: str, case: GoldenCase) -> Output:
        if case.name not in self.logits:
            raise AdapterNotSupported(f"no logits file for {case.id}: write {self.directory}/{case.name}.npy "
                                      f"or {case.name}.safetensors")
        if capability_name != capability(case):
            raise AdapterNotSupported(f"{case.name}'s file holds {capability(case)} logits, not {capability_name}")
        return validate_array(self.logits[case.name], f"{case.name} logits file", case.expected["logits"].shape,
                              "= [batch, seq, vocab]")


@dataclass(frozen=True)
class FileVerdict:
    case: str
    capability: str
    result: CheckResult


def load_directory(directory: Path, cases: list[GoldenCase]) -> dict[str, np.ndarray]:
    """{case name: logits} for every case with a file; LogitsFileError on a bad file."""
    if not directory.exists():
        raise LogitsFileError(f"--logits {directory}: does not exist")
    if not directory.is_dir():
        raise LogitsFileError(f"--logits {directory}: not a directory")
    found = {}
    for case in cases:
        path = find_file(directory, case.name)
        if path is not None:
            found[case.name] = read_logits(path, case.expected["logits"].shape)
    return found


def stray_files(directory: Path, case_names: list[str]) -> list[str]:
    """Logits-like files in `directory` that name none of `case_names` (a typo would otherwise
    go unnoticed: its case would only show NOT SUPPORTED)."""
    return sorted(p.name for p in directory.iterdir() if p.suffix in SUFFIXES and p.stem not in case_names)


def check_directory(arch: str, directory: Path | str, dtype: str | None = None, store: GoldenStore | None = None,
                    tolerances: Tolerances | None = None, repro: str | None = None) -> list[FileVerdict]:
    """Judge every case of `arch` against its file in `directory` (NOT SUPPORTED without one)."""
    if not str(directory).strip():  # Path("") would be the current folder
        raise LogitsFileError("--logits is empty (an unset shell variable?): give the folder of logits files")
    store, directory = store or GoldenStore(), Path(directory)
    names = store.case_names(arch)
    if not names:
        raise KeyError(f"no golden cases for arch {arch!r} in {store.root}; archs: {', '.join(store.archs())}")
    cases = [store.load(arch, name) for name in names]
    adapter = FilesAdapter(directory, load_directory(directory, cases), dtype)
    if not adapter.logits:
        raise LogitsFileError(f"--logits {directory}: no file for any case of {arch} (expected <case>.npy or "
                              f"<case>.safetensors, cases: {', '.join(names)})")
    return [FileVerdict(case.name, capability(case), run_check(case, adapter, capability(case), tolerances,
                                                               repro=repro))
            for case in cases]


def failed(verdicts: list[FileVerdict]) -> bool:
    return any(v.result.status == FAIL for v in verdicts)
