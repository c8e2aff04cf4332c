"""`lmref golden`: write the golden store, or regenerate it in memory and compare (`--check`).

Regeneration is compared with a tolerance of 1e-9 relative to each array's scale, not
bit for bit: BLAS kernels sum in different orders on different CPUs, which moves float64
results by ~1e-16.  Inputs, configs and metadata must match exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import lmref
from lmref.conformance.cases import case_config, case_specs, compute_case
from lmref.conformance.store import (
    GoldenStore, GoldenStoreError, MANIFEST, FORMAT_VERSION, case_meta, write_case, write_manifest,
)
from lmref.spec.presets import PRESETS

REGENERATION_RTOL = 1e-9


def generator_id() -> str:
    return f"lmref {lmref.__version__} (numpy {np.__version__})"


def _existing_files(root: Path) -> dict[str, str]:
    path = root / MANIFEST
    if not path.is_file():
        return {}
    manifest = json.loads(path.read_text())
    return manifest["files"] if manifest.get("format_version") == FORMAT_VERSION else {}


def generate(root: Path, archs: list[str], progress=print) -> dict[str, str]:
    """(Re)write the cases of `archs` under `root`, keep the other archs, rewrite the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    files = {k: v for k, v in _existing_files(root).items() if k.split("/")[0] not in archs}
    for arch in archs:
        shutil.rmtree(root / arch, ignore_errors=True)
        for spec in case_specs(case_config(arch)):
            files |= write_case(root, compute_case(arch, spec))
            progress(f"  wrote {arch}/{spec.name}")
    write_manifest(root, files, generator_id())
    return files


def _compare_arrays(where: str, stored: dict, fresh: dict) -> list[str]:
    problems = []
    if set(stored) != set(fresh):
        return [f"{where}: arrays {sorted(stored)} differ from the generator's {sorted(fresh)}"]
    for name, ref in fresh.items():
        got = stored[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            problems.append(f"{where}: {name} is {got.dtype}{list(got.shape)}, generator gives {ref.dtype}{list(ref.shape)}")
            continue
        scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
        diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        if not diff <= REGENERATION_RTOL * scale:
            problems.append(f"{where}: {name} differs from the regenerated value by {diff:.3g} (scale {scale:.3g})")
    return problems


def check(root: Path, archs: list[str]) -> list[str]:
    """Every problem found: stale, tampered, missing or unlisted files, changed values."""
    try:
        store = GoldenStore(root)
    except GoldenStoreError as e:
        return [str(e)]
    problems = [f"{root / f}: not listed in {MANIFEST}" for f in store.unlisted_files()]
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
            if json.loads(json.dumps(case_meta(fresh))) != stored.meta:
                problems.append(f"{where}: case.json differs from what the generator writes")
            if not np.array_equal(stored.tokens, fresh.tokens):
                problems.append(f"{where}: input tokens differ from the generator's")
            problems += _compare_arrays(where, stored.expected, fresh.expected)
    return problems
