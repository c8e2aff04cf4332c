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
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray:
    """The array in `path`, its shape checked on the header before any data is read (a header
    can declare terabytes)."""
    try:
        return (_read_npy if path.suffix == ".npy" else _read_safetensors)(path, expected_shape)
    except LogitsFileError:
        raise
    except ConversionError as e:
        raise LogitsFileError(str(e)) from None
    except Exception as e:  # NumPy and safetensors raise their own types on a malformed file
        raise LogitsFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def _read_npy(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray:
    with path.open("rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:  # np.load would call it pickled data, whatever it is
            raise LogitsFileError(f"{path}: not a .npy file (it does not begin with NumPy's magic string; write it "
                                  "with numpy.save)")
        f.seek(0)
        read_header = NPY_HEADER_READERS.get(np.lib.format.read_magic(f))
        if read_header is not None:  # numpy.save writes 1.0 (2.0 for huge headers; 3.0: np.load checks)
            _check_shape(path, read_header(f)[0], expected_shape)
    array = np.load(path, allow_pickle=False)  # never pickle (DESIGN.md)
    _check_shape(path, array.shape, expected_shape)
    return array


def _read_safetensors(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray:
    from lmref.convert.safetensors_io import read_file, tensor_headers

    headers = tensor_headers(path)
    if set(headers) != {SAFETENSORS_NAME}:
        raise LogitsFileError(f"{path}: expected one tensor named {SAFETENSORS_NAME!r}, found {sorted(headers)}")
    _check_shape(path, headers[SAFETENSORS_NAME].shape, expected_shape)
    return read_file(path)[SAFETENSORS_NAME]  # BF16 (what a bfloat16 engine writes) widened exactly to float32


def _check_shape(path: Path, shape: tuple[int, ...], expected_shape: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(expected_shape):
        raise LogitsFileError(f"{path}: shape {tuple(shape)}, expected {tuple(expected_shape)} "
                              "= [batch, seq, vocab] of the case")


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
    """{case name: logits} for every case with a file; LogitsFileError naming every bad file."""
    if not directory.exists():
        raise LogitsFileError(f"--logits {directory}: does not exist")
    if not directory.is_dir():
        raise LogitsFileError(f"--logits {directory}: not a directory")
    found, problems = {}, []
    for case in cases:
        try:
            path = find_file(directory, case.name)
            if path is not None:
                found[case.name] = _read(path, case.expected["logits"].shape)
        except LogitsFileError as e:
            problems.append(str(e))
    if len(problems) > 1:
        raise LogitsFileError(f"{len(problems)} files cannot be judged:\n  " + "\n  ".join(problems))
    if problems:
        raise LogitsFileError(problems[0])
    return found


def unread_files(directory: Path, arch: str, case_names: list[str]) -> list[str]:
    """Notes on the files in `directory` that look like logits but are not read (a typo would
    otherwise only show as NOT SUPPORTED): a .npy or .safetensors naming no case, an .npz
    archive, and a case's name with another suffix."""
    notes = []
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        if path.suffix in SUFFIXES and path.stem not in case_names:
            notes.append(f"{path.name} names no case of {arch}; ignored")
        elif path.suffix == ".npz" or (path.suffix not in SUFFIXES and path.stem in case_names):
            notes.append(f"{path.name} is not read: save each case's logits as <case>.npy (numpy.save) or "
                         "<case>.safetensors")
    return notes


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
