"""`lmref golden`: write the golden store, or regenerate it in memory and compare (`--check`).

Writing follows spec/outputs.py's rule: the directory is claimed as a "golden-store" (taken
only when it is new, empty or already marked as one), and rewriting an arch deletes only the
files the store's MANIFEST lists for it, never the folder with whatever else is in it.  When
the store written is the package's own (conformance/golden), the release pin
(conformance/golden_pin.py) is rewritten to its new MANIFEST.json.

Regeneration is compared with a tolerance of 1e-9 relative to each array's scale, not
bit for bit: BLAS kernels sum in different orders on different CPUs, which moves float64
results by ~1e-16.  Inputs, configs and metadata must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import lmref
from lmref.conformance.cases import case_config, case_specs, compute_case
from lmref.conformance.store import (
    CASE_FILES, DEFAULT_GOLDEN_DIR, FORMAT_VERSION, KIND, MANIFEST, GoldenStore, GoldenStoreError, case_meta,
    release_problem, sha256_of, write_case, write_manifest,
)
from lmref.spec.errors import OutputError
from lmref.spec.outputs import claim
from lmref.spec.presets import PRESETS

REGENERATION_RTOL = 1e-9


def generator_id() -> str:
    return f"lmref {lmref.__version__} (numpy {np.__version__})"


PIN_FILE = Path(__file__).parent / "golden_pin.py"


def _existing_files(root: Path) -> dict[str, str]:
    """The files the store's manifest lists ({} for a new store); GoldenStoreError when the
    manifest cannot be read (then nothing is known to be the store's, and nothing is written)."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"] if manifest.get("format_version") == FORMAT_VERSION else {}
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # RecursionError: deep nesting
        raise GoldenStoreError(f"{path}: unreadable ({type(e).__name__}: {e}); it says which files the store "
                               "wrote, so nothing is deleted: fix or remove it") from None
    if not isinstance(files, dict):
        raise GoldenStoreError(f"{path}: 'files' is not an object; fix or remove it")
    return files


def _own_path(root: Path, rel: str) -> Path | None:
    """root/rel when `rel` is a case file the store writes (`<arch>/<case>/<file>`) that lies
    inside the store; None for anything else a manifest may name (never deleted)."""
    parts = rel.split("/")
    if len(parts) != 3 or parts[2] not in CASE_FILES or any(p in ("", ".", "..") for p in parts):
        return None
    path = root / rel
    if Path(root).resolve() not in path.parent.resolve().parents:
        return None
    return path


def _remove_listed(root: Path, arch: str, listed: dict[str, str]) -> None:
    """Delete the files `listed` (the old manifest) holds for `arch`, then the folders left empty."""
    folders = set()
    for rel in listed:
        path = _own_path(root, rel)
        if path is not None and rel.split("/")[0] == arch:
            path.unlink(missing_ok=True)
            folders.add(path.parent)
    for folder in sorted(folders, reverse=True) + [root / arch]:
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


def _remove_case_files(root: Path, archs: list[str]) -> None:
    """Delete the case files of `archs` and the folders left empty: after a write that failed,
    what this run wrote or had begun (a user's file there was refused before the first write:
    `_refuse_foreign_files`; the old ones are gone), so that a retry meets no unlisted file."""
    for arch in archs:
        for spec in case_specs(case_config(arch)):
            folder = root / arch / spec.name
            for name in CASE_FILES:
                (folder / name).unlink(missing_ok=True)
                (folder / f"{name}.tmp").unlink(missing_ok=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if (root / arch).is_dir() and not any((root / arch).iterdir()):
            (root / arch).rmdir()


def _refuse_foreign_files(root: Path, archs: list[str], listed: dict[str, str]) -> None:
    """OutputError when a file the store is about to write exists but its manifest does not
    list it: somebody else's file, never overwritten."""
    for arch in archs:
        for spec in case_specs(case_config(arch)):
            for name in CASE_FILES:
                rel = f"{arch}/{spec.name}/{name}"
                if rel not in listed and ((root / rel).exists() or (root / rel).is_symlink()):
                    raise OutputError(f"--out {root}: holds {rel}, which its {MANIFEST} does not list; "
                                      "lmref golden overwrites only files it wrote: move it away")


def is_package_store(root: Path) -> bool:
    return Path(root).resolve() == DEFAULT_GOLDEN_DIR.resolve()


def write_pin(root: Path) -> str:
    """Record the sha256 of `root`'s MANIFEST.json as the release pin (conformance/golden_pin.py)."""
    digest = sha256_of(root / MANIFEST)
    text = PIN_FILE.read_text()
    start = text.index('MANIFEST_SHA256 = "')
    end = text.index('"', start + len('MANIFEST_SHA256 = "'))
    PIN_FILE.write_text(f'{text[:start]}MANIFEST_SHA256 = "{digest}{text[end:]}')
    return digest


def generate(root: Path, archs: list[str], progress=print) -> dict[str, str]:
    """(Re)write the cases of `archs` under `root`, keep the other archs, rewrite the manifest.

    `root` is claimed first (spec.outputs.claim: new, empty or marked as a golden store, else
    OutputError); an arch's old files are deleted only as its manifest lists them.  Writing the
    package's own store also rewrites the release pin."""
    root = Path(root)
    claim(root, KIND)
    listed = _existing_files(root)
    _refuse_foreign_files(root, archs, listed)
    files = {k: v for k, v in listed.items() if k.split("/")[0] not in archs}
    try:
        for arch in archs:
            _remove_listed(root, arch, listed)
            for spec in case_specs(case_config(arch)):
                files |= write_case(root, compute_case(arch, spec))
                progress(f"  wrote {arch}/{spec.name}")
    except BaseException:  # a full disk, an interrupt: the store keeps the other archs, whole
        _remove_case_files(root, archs)
        write_manifest(root, {k: v for k, v in files.items() if k.split("/")[0] not in archs}, generator_id())
        raise
    write_manifest(root, files, generator_id())
    if is_package_store(root):
        progress(f"  pinned the release golden set: {MANIFEST} sha256 {write_pin(root)}")
    return files


def regeneration_gap(stored: np.ndarray, fresh: np.ndarray) -> tuple[float, float]:
    """(max |stored - fresh|, the scale it is judged by): equal for `check` when the gap is at
    most REGENERATION_RTOL x the scale (BLAS sums in its own order)."""
    scale = max(1.0, float(np.max(np.abs(fresh)))) if fresh.size else 1.0
    return (float(np.max(np.abs(stored - fresh))) if fresh.size else 0.0), scale


def _compare_arrays(where: str, stored: dict, fresh: dict) -> list[str]:
    problems = []
    if set(stored) != set(fresh):
        return [f"{where}: arrays {sorted(stored)} differ from the generator's {sorted(fresh)}"]
    for name, ref in fresh.items():
        got = stored[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            problems.append(f"{where}: {name} is {got.dtype}{list(got.shape)}, generator gives {ref.dtype}{list(ref.shape)}")
            continue
        diff, scale = regeneration_gap(got, ref)
        if not diff <= REGENERATION_RTOL * scale:
            problems.append(f"{where}: {name} differs from the regenerated value by {diff:.3g} (scale {scale:.3g})")
    return problems


def _same_meta(fresh: dict, stored: dict) -> bool:
    """case.json equal, exactly but for a MoE case's smallest routing gap: a float64 result,
    equal within REGENERATION_RTOL (the arrays' rule: BLAS sums in its own order)."""
    fresh, stored = json.loads(json.dumps(fresh)), json.loads(json.dumps(stored))  # copies
    gaps = [meta.get("routing", {}).pop("smallest_gap", None) for meta in (fresh, stored)]
    if None in gaps:
        return fresh == stored and gaps[0] == gaps[1]
    return fresh == stored and abs(gaps[0] - gaps[1]) <= REGENERATION_RTOL * abs(gaps[1])


def check(root: Path, archs: list[str]) -> list[str]:
    """Every problem found: stale, tampered, missing or unlisted files, changed values."""
    try:
        store = GoldenStore(root)
    except GoldenStoreError as e:
        return [str(e)]
    problems = [f"{root / f}: not listed in {MANIFEST}" for f in store.unlisted_entries()]
    if is_package_store(root) and (problem := release_problem(store)):
        problems.append(f"{problem}; `lmref golden` rewrites the pin when it writes this store")
    problems += [f"{a}: in the store but not a known preset" for a in store.archs() if a not in PRESETS]
    for arch in archs:
        if not store.case_names(arch):
            problems.append(f"{arch}: the store holds no case of this arch (write them with "
                            f"`lmref golden --arch {arch}`)")
            continue
        specs = case_specs(case_config(arch))
        stale = sorted(set(store.case_names(arch)) - {s.name for s in specs})
        problems += [f"{arch}/{name}: stored case the generator no longer makes" for name in stale]
        for spec in specs:
            where = f"{arch}/{spec.name}"
            try:
                stored = store.load(arch, spec.name)
            except (GoldenStoreError, KeyError, ValueError) as e:
                problems.append(f"{where}: {e}")
                continue
            fresh = compute_case(arch, spec)
            if not _same_meta(json.loads(json.dumps(case_meta(fresh))), stored.meta):
                problems.append(f"{where}: case.json differs from what the generator writes")
            if not np.array_equal(stored.tokens, fresh.tokens):
                problems.append(f"{where}: input tokens differ from the generator's")
            if (stored.pixel_values is None) != (fresh.pixel_values is None) or (
                    fresh.pixel_values is not None and not np.array_equal(stored.pixel_values, fresh.pixel_values)):
                problems.append(f"{where}: input pixel_values differ from the generator's")
            problems += _compare_arrays(where, stored.expected, fresh.expected)
    return problems
