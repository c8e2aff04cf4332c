"""`lmref golden export`: the golden cases of one arch as plain files, for engines outside Python.

    DIR/
      manifest.json                 what every file is, the arch, the golden set's version, the
                                    weights format, and the logits files `lmref check` reads
      <case>/case.json              kind, the ModelConfig, tokens (nested lists), prompt_len,
                                    the expected logits' shape, every tolerance row (the case's
                                    overrides applied) and the capability `lmref check` judges
      <case>/tokens.npy             int64 [batch, seq]: one sequence per batch row
      <case>/expected_logits.npy    float64 [batch, seq, vocab]: the golden's logits (of the
                                    decode, for a decode case)
      <case>/prefill_logits.npy     float64 [batch, seq, vocab]: one forward pass's logits, where
                                    they differ from the decode's (LongRoPE's decode-cross case)
      <case>/pixel_values.npy       float64 [n_images, C, H, W]: a multimodal case's images
      <case>/model.gguf             --format gguf: float32, llama.cpp's layout (convert/gguf.py)
      <case>/hf/                    --format hf: a Hugging Face model directory (convert/hf.py)
      <case>/params.safetensors     --format safetensors: float64, lmref's canonical names
                                    (spec/params.py), with <case>/config.json (ModelConfig)

A decode case is run as the suite's `decode`: the first prompt_len tokens of each row in one
prefill, then the rest one token at a time through the engine's KV cache, logits of every
position.  DIR must be new or empty: nothing is ever overwritten, every config (a refused GGUF
arch or knob) and every case's tolerance rows are checked before the first file is written, and
an export that fails while writing (a full disk) removes what it wrote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np

from lmref import __version__
from lmref.conformance.store import GoldenCase, GoldenStore
from lmref.conformance.tolerances import Tolerances
from lmref.spec.errors import OutputError
from lmref.spec.outputs import check_not_a_broken_link, check_not_an_input, check_not_in_a_listing_output

FORMATS = ("gguf", "hf", "safetensors")
EXPORT_FORMAT, EXPORT_FORMAT_VERSION = "lmref-golden-export", 1
WEIGHTS = {"gguf": "model.gguf", "hf": "hf", "safetensors": "params.safetensors"}
FILES = {
    "<case>/case.json": "kind, config (lmref ModelConfig), tokens, prompt_len, expected shape, tolerance rows, "
                        "capability judged",
    "<case>/tokens.npy": "int64 [batch, seq]: the input token ids, one sequence per batch row",
    "<case>/expected_logits.npy": "float64 [batch, seq, vocab]: the golden's logits at every position",
    "<case>/prefill_logits.npy": "float64 [batch, seq, vocab]: one forward pass's logits of the whole sequence, "
                                 "where they differ from the decode's (only in LongRoPE's decode-cross case)",
    "<case>/pixel_values.npy": "float64 [n_images, C, H, W]: the images of a multimodal case (only there)",
}
WEIGHT_FILES = {
    "gguf": {"<case>/model.gguf": "the weights as a float32 GGUF for llama.cpp (tokenizer.ggml.model 'none')"},
    "hf": {"<case>/hf/": "the weights as a Hugging Face model directory (config.json, model.safetensors, float64)"},
    "safetensors": {"<case>/params.safetensors": "the weights, float64, lmref's canonical names (spec/params.py)",
                    "<case>/config.json": "the lmref ModelConfig of the case"},
}


def capability(case: GoldenCase) -> str:
    """What `lmref check` judges a case's logits file as: `decode` for a decode case, else `forward`."""
    return "decode" if case.kind == "decode" else "forward"


def check_new_directory(out: Path) -> None:
    """OutputError unless `out` is new or an empty directory (an export never overwrites)."""
    check_not_a_broken_link(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"--out {out}: the directory exists and is not empty; give a new or empty directory "
                          "(an export never overwrites)")


def _check_writable(cases: list[GoldenCase], fmt: str) -> None:
    """Refuse, before any file is written, a config the format cannot express."""
    for case in cases:
        if fmt == "gguf":
            from lmref.convert.gguf import check_expressible, gguf_arch, require_gguf

            require_gguf()
            check_expressible(case.config, gguf_arch(case.config))
        elif fmt == "hf":
            from lmref.convert.hf import hf_config

            hf_config(case.config)


def _write_weights(case: GoldenCase, fmt: str, directory: Path) -> None:
    params = case.params()
    if fmt == "gguf":
        from lmref.convert.gguf import write_gguf

        write_gguf(case.config, params, directory / WEIGHTS["gguf"])
    elif fmt == "hf":
        from lmref.convert.hf import to_hf

        to_hf(case.config, params, directory / WEIGHTS["hf"], option="--out")
    else:
        from lmref.convert.safetensors_io import write_file

        write_file(directory / WEIGHTS["safetensors"], params)
        (directory / "config.json").write_text(json.dumps(case.config.to_dict(), indent=1, sort_keys=True) + "\n")


def case_record(case: GoldenCase, tolerances: Tolerances) -> dict:
    """case.json of an exported case."""
    rows = tolerances.all_rows(case.tolerances, where=f"{case.id}/case.json")
    return {
        "arch": case.arch, "case": case.name, "kind": case.kind, "description": case.meta.get("description", ""),
        "capability": capability(case), "config": case.config.to_dict(),
        "tokens": case.tokens.tolist(), "prompt_len": case.prompt_len,
        "expected_logits_shape": list(case.expected["logits"].shape),
        "tolerances": {name: dataclasses.asdict(row) for name, row in rows.items()},
    }


def write_case(case: GoldenCase, record: dict, fmt: str, directory: Path) -> None:
    """The case's files: `record` (case_record) as case.json, its arrays and weights."""
    directory.mkdir()
    (directory / "case.json").write_text(json.dumps(record, indent=1) + "\n")
    np.save(directory / "tokens.npy", np.ascontiguousarray(case.tokens, dtype=np.int64))
    np.save(directory / "expected_logits.npy", np.ascontiguousarray(case.expected["logits"], dtype=np.float64))
    if "prefill_logits" in case.expected:
        np.save(directory / "prefill_logits.npy", np.ascontiguousarray(case.prefill_logits, dtype=np.float64))
    if case.pixel_values is not None:
        np.save(directory / "pixel_values.npy", np.ascontiguousarray(case.pixel_values))
    _write_weights(case, fmt, directory)


def manifest(arch: str, fmt: str, store: GoldenStore, cases: list[GoldenCase]) -> dict:
    return {
        "format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "written_by": f"lmref {__version__}",
        "arch": arch, "golden_version": store.version, "weights_format": fmt,
        "files": FILES | WEIGHT_FILES[fmt],
        "cases": {c.name: {"kind": c.kind, "capability": capability(c), "tokens": list(c.tokens.shape),
                           "logits": list(c.expected["logits"].shape), "prompt_len": c.prompt_len,
                           "logits_file": f"{c.name}.npy or {c.name}.safetensors"}
                  for c in cases},
        "check": (f"write one file per case into a folder, <case>.npy or <case>.safetensors (one tensor named "
                  f"'logits'), float [batch, seq, vocab] logits of every position; then run "
                  f"`lmref check --arch {arch} --logits FOLDER --dtype float32` (docs/engines.md)"),
    }


def export_golden(arch: str, fmt: str, out: Path | str, store: GoldenStore | None = None,
                  tolerances: Tolerances | None = None) -> list[str]:
    """Write every stored case of `arch` into `out` in `fmt`; return the case names written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown --format {fmt!r}; formats: {', '.join(FORMATS)}")
    out, store, tolerances = Path(out), store or GoldenStore(), tolerances or Tolerances()
    check_not_an_input(out, [store.root])  # an entry the store's manifest does not list breaks the store
    check_not_in_a_listing_output(out)  # any other store likewise
    check_new_directory(out)
    names = store.case_names(arch)
    if not names:
        raise KeyError(f"no golden cases for arch {arch!r} in {store.root}; archs: {', '.join(store.archs())}")
    cases = [store.load(arch, name) for name in names]
    _check_writable(cases, fmt)
    records = [case_record(case, tolerances) for case in cases]  # every tolerance row checked before writing
    made = list(itertools.takewhile(lambda folder: not folder.exists(), [out, *out.parents]))  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    try:
        for case, record in zip(cases, records):
            write_case(case, record, fmt, out / case.name)
        (out / "manifest.json").write_text(json.dumps(manifest(arch, fmt, store, cases), indent=1) + "\n")
    except BaseException:  # a full disk, an interrupt: no half export is left (out was new or empty)
        _remove_written(out, [case.name for case in cases], made)
        raise
    return names


def _remove_written(out: Path, names: list[str], made: list[Path]) -> None:
    """Remove what export_golden wrote into `out`: its case folders and manifest, then the
    folders it made (`out` and the parents that did not exist), deepest first."""
    for name in names:
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "manifest.json").unlink(missing_ok=True)
    for folder in made:
        with contextlib.suppress(OSError):
            folder.rmdir()
