"""The golden store: data, not code.

    conformance/golden/
      MANIFEST.json                    format_version, generator, sha256 of every file
      <arch>/<case>/case.json          format_version, arch, case, kind, config, weight seed,
                                       input shapes, expected names, tolerance overrides
      <arch>/<case>/inputs.safetensors tokens int64 [batch, seq]; a multimodal case also
                                       pixel_values float64 [n_images, C, H, W] and
                                       image_positions int64 [n, 2] (batch row, position of
                                       each image placeholder, row-major: spec/vision.py)
      <arch>/<case>/expected.safetensors  float64: logits [batch, seq, vocab], loss [1],
                                       capture.<name> [batch, seq, ...]; a decode case whose
                                       prefill differs (LongRoPE past its original context)
                                       also prefill_logits [batch, seq, vocab]

Weights are not stored: `spec.init_params(config, seed)` rebuilds them exactly on any
machine.  Every read checks the file's sha256 against the manifest; a tampered, missing or
unlisted file in a case, or an unknown format version, raises `GoldenStoreError`: the suite
fails loudly, it never skips.  The store holds nothing but what its manifest lists, the
manifest itself and `lmref golden`'s marker file (spec/outputs.py's MARKER):
`unlisted_entries` names anything else, and the suite refuses a store holding an unlisted
case directory or file.

The release golden set is pinned: conformance/golden_pin.py records the sha256 of the
package store's MANIFEST.json (written by `lmref golden` when it writes that store), and
`release_problem` says when a store's manifest differs from it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from lmref.conformance.case_file import GoldenStoreError, check_case_meta, json_object
from lmref.conformance.tolerances import ToleranceError, check_overrides
from lmref.spec.config import ConfigError, ModelConfig
from lmref.spec.outputs import GOLDEN_STORE_KIND, MARKER
from lmref.spec.params import init_params

FORMAT_VERSION = 1
DEFAULT_GOLDEN_DIR = Path(__file__).parent / "golden"
MANIFEST = "MANIFEST.json"
CASE_FILES = ("case.json", "inputs.safetensors", "expected.safetensors")
KIND = GOLDEN_STORE_KIND  # the kind `lmref golden` claims its output directory as (spec/outputs.py)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.lru_cache(maxsize=16)
def case_params(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """A case's float64 weights, built once per (config, seed); shared, so never mutate them
    (the Adapter wrapper hands adapters copies)."""
    return init_params(config, seed)


@dataclass
class GoldenCase:
    """One stored case, verified against the manifest when loaded."""

    arch: str
    name: str
    meta: dict
    config: ModelConfig
    tokens: np.ndarray
    expected: dict[str, np.ndarray]
    pixel_values: np.ndarray | None = None  # [n_images, C, H, W]: the images of a multimodal case

    @property
    def id(self) -> str:
        return f"{self.arch}/{self.name}"

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def prompt_len(self) -> int | None:
        return self.meta["inputs"].get("prompt_len")

    @property
    def tolerances(self) -> dict:
        return self.meta.get("tolerances", {})

    @property
    def prefill_logits(self) -> np.ndarray:
        """What `forward` (one prefill of the whole sequence) must give: `logits`, but for a
        LongRoPE decode case that crosses the original context, whose stored `logits` are the
        decode's (each step a prefill of its prefix: spec/MATH.md "LongRoPE")."""
        return self.expected.get("prefill_logits", self.expected["logits"])

    @property
    def captures(self) -> dict[str, np.ndarray]:
        """Captured intermediates in computation order (the order case.json lists them)."""
        return {n: self.expected[f"capture.{n}"] for n in self.meta["expected"].get("captures", [])}

    def params(self) -> dict[str, np.ndarray]:
        return init_params(self.config, self.meta["weights"]["seed"])


def _check_version(what: str, data: dict) -> None:
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise GoldenStoreError(
            f"{what}: unknown golden format version {version!r} (this lmref reads version {FORMAT_VERSION}); "
            "regenerate the store with `lmref golden` or install the lmref that wrote it"
        )


class GoldenStore:
    """Read access to a golden directory; every file is checked against the manifest."""

    def __init__(self, root: Path | str = DEFAULT_GOLDEN_DIR):
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise GoldenStoreError(f"no golden manifest at {manifest_path}; generate it with `lmref golden`")
        raw = manifest_path.read_bytes()
        self.manifest = json_object(manifest_path, raw)
        _check_version(str(manifest_path), self.manifest)
        files = self.manifest.get("files")
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise GoldenStoreError(f"{manifest_path}: 'files' must map each file's path to its sha256")
        self.files: dict[str, str] = files
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()

    @property
    def version(self) -> str:
        """Format version and a short digest of the manifest: names this exact golden set."""
        digest = hashlib.sha256(json.dumps(self.files, sort_keys=True).encode()).hexdigest()[:12]
        return f"v{FORMAT_VERSION}-{digest}"

    def archs(self) -> list[str]:
        return sorted({path.split("/")[0] for path in self.files})

    def case_names(self, arch: str) -> list[str]:
        names = {path.split("/")[1] for path in self.files if path.startswith(f"{arch}/")}
        return sorted(names, key=_case_order)

    def case_dirs(self) -> set[str]:
        """'<arch>/<case>' of every case the manifest lists."""
        return {"/".join(path.split("/")[:2]) for path in self.files}

    def unlisted_entries(self, under: str = "") -> list[str]:
        """What is on disk under the store (or under its folder `under`) that the manifest does
        not list: files, and folders holding no listed file (named once, with a trailing '/',
        their contents not repeated).  The manifest and the marker at the root are the store's."""
        listed = set(self.files)
        holding = {"/".join(p.split("/")[:i]) for p in listed for i in range(1, p.count("/") + 1)}
        start = self.root / under if under else self.root
        found = []
        for directory, dirs, names in os.walk(start):
            rel_dir = Path(directory).relative_to(self.root).as_posix()
            prefix = "" if rel_dir == "." else f"{rel_dir}/"
            for d in sorted(dirs):
                if f"{prefix}{d}" not in holding:
                    found.append(f"{prefix}{d}/")
            dirs[:] = sorted(d for d in dirs if f"{prefix}{d}" in holding)  # walk only into the store's folders
            for name in sorted(names):
                rel = f"{prefix}{name}"
                if rel not in listed and rel not in (MANIFEST, MARKER):
                    found.append(rel)
        return sorted(found)

    def unlisted_files(self) -> list[str]:
        """Files on disk under the store that the manifest does not list (the manifest and
        `lmref golden`'s marker at the root are not counted)."""
        found = []
        for directory, _, names in os.walk(self.root):
            rel_dir = Path(directory).relative_to(self.root).as_posix()
            prefix = "" if rel_dir == "." else f"{rel_dir}/"
            found += [f"{prefix}{n}" for n in names if f"{prefix}{n}" not in self.files
                      and f"{prefix}{n}" not in (MANIFEST, MARKER)]
        return sorted(found)

    def strays(self) -> list[str]:
        """Unlisted entries outside the listed case folders: an unlisted case directory, a stray
        file at the root or in an arch folder.  (An unlisted file inside a listed case makes
        that case unusable instead: `load` raises.)"""
        cases = self.case_dirs()

        def inside_a_case(entry: str) -> bool:
            parts = entry.rstrip("/").split("/")
            return len(parts) > 2 and "/".join(parts[:2]) in cases

        return [e for e in self.unlisted_entries() if not inside_a_case(e)]

    def verified_path(self, rel: str) -> Path:
        path = self.root / rel
        if rel not in self.files:
            raise GoldenStoreError(f"{path}: not listed in {MANIFEST}")
        if not path.is_file():
            raise GoldenStoreError(f"{path}: listed in {MANIFEST} but missing")
        actual = sha256_of(path)
        if actual != self.files[rel]:
            raise GoldenStoreError(
                f"{path}: sha256 {actual[:16]}... does not match the manifest's {self.files[rel][:16]}...: "
                "the file was modified or corrupted"
            )
        return path

    def load_meta(self, arch: str, name: str) -> dict:
        """A case's case.json (verified against the manifest, of a known format version, its
        tolerance overrides valid): a custom store's manifest may list a case.json made by hand."""
        path = self.verified_path(f"{arch}/{name}/case.json")
        meta = json_object(path, path.read_bytes())
        _check_version(str(path), meta)
        check_case_meta(path, meta)
        try:
            check_overrides(meta.get("tolerances", {}), str(path))
        except ToleranceError as e:
            raise GoldenStoreError(str(e)) from None
        return meta

    def load(self, arch: str, name: str) -> GoldenCase:
        base = f"{arch}/{name}"
        meta = self.load_meta(arch, name)
        try:
            inputs = load_file(self.verified_path(f"{base}/inputs.safetensors"))
            expected = load_file(self.verified_path(f"{base}/expected.safetensors"))
        except GoldenStoreError:
            raise
        except Exception as e:  # safetensors raises its own error types on a malformed file
            raise GoldenStoreError(f"{self.root / base}: unreadable safetensors ({e})") from None
        unlisted = self.unlisted_entries(base)
        if unlisted:
            shown = ", ".join(str(self.root / u) for u in unlisted[:3]) + (" ..." if len(unlisted) > 3 else "")
            raise GoldenStoreError(f"{shown}: not listed in {MANIFEST}: the case holds files its manifest does "
                                   "not list (remove them, or regenerate the store with `lmref golden`)")
        try:
            config = ModelConfig.from_dict(meta["config"])
        except (TypeError, ConfigError) as e:
            raise GoldenStoreError(f"{self.root / base}/case.json: config: {e}") from None
        return GoldenCase(arch, name, meta, config, inputs["tokens"], expected, inputs.get("pixel_values"))


def pinned_manifest_sha256() -> str:
    """The sha256 of the release golden set's MANIFEST.json, as the package records it."""
    from lmref.conformance.golden_pin import MANIFEST_SHA256

    return MANIFEST_SHA256


def release_problem(store: GoldenStore) -> str | None:
    """Why `store` is not the release golden set (its manifest differs from the pin); None when it is."""
    pinned = pinned_manifest_sha256()
    if store.manifest_sha256 == pinned:
        return None
    return (f"{store.root / MANIFEST} has sha256 {store.manifest_sha256[:16]}..., but the release golden set of "
            f"this lmref has {pinned[:16]}... (conformance/golden_pin.py): the store differs from the release "
            "golden set (a case added, removed or changed)")


def open_checked(root: str | Path | None) -> tuple[GoldenStore, bool]:
    """(the store at `root`, whether it is a custom one): None or the package's own path is the
    package's store, which must be the release golden set; no store may hold an unlisted case
    directory or file.  GoldenStoreError saying what to do otherwise (as may GoldenStore), and
    for an empty `root`: what an unset shell variable gives, never a request for the package's."""
    if root is not None and not str(root).strip():
        raise GoldenStoreError("--golden-dir is empty (an unset shell variable?): give a golden store, or leave "
                               "--golden-dir out for the package's")
    custom = root is not None and Path(root).resolve() != Path(DEFAULT_GOLDEN_DIR).resolve()
    store = GoldenStore(DEFAULT_GOLDEN_DIR if root is None else root)
    if not custom and (problem := release_problem(store)):
        raise GoldenStoreError(
            f"{problem}.  Restore the package's store (reinstall lmref, or `git checkout conformance/golden` in a "
            f"checkout), or run a copy of it as a custom golden store: cp -r {store.root} STORE, then "
            "--golden-dir STORE (the package's own path always means the release set)")
    strays = store.strays()
    if strays:
        shown = ", ".join(strays[:5]) + (f" and {len(strays) - 5} more" if len(strays) > 5 else "")
        raise GoldenStoreError(
            f"{store.root}: holds {shown}, not listed in {MANIFEST} (an unlisted case directory or file): remove "
            "it, or regenerate the store with `lmref golden`")
    return store, custom


def _case_order(name: str) -> tuple[int, str]:
    order = ("prefill", "decode", "long")
    head = name.split("-")[0]
    return (order.index(head) if head in order else len(order), name)


# --- writing ---------------------------------------------------------------------------------


def case_meta(computed) -> dict:
    """case.json content of a `cases.ComputedCase`."""
    spec = computed.spec
    return {
        "format_version": FORMAT_VERSION,
        "arch": computed.arch,
        "case": spec.name,
        "kind": spec.kind,
        "description": spec.description,
        "config": computed.config.to_dict(),
        "weights": {"init": "spec.init_params", "seed": spec.seed},
        "inputs": {"tokens": list(computed.tokens.shape), "prompt_len": spec.prompt_len,
                   **({} if computed.pixel_values is None else {"pixel_values": list(computed.pixel_values.shape)})},
        "expected": {
            "logits": list(computed.expected["logits"].shape),
            **({"prefill_logits": list(computed.expected["prefill_logits"].shape)}
               if "prefill_logits" in computed.expected else {}),
            "loss": True,
            "captures": [k.removeprefix("capture.") for k in computed.expected if k.startswith("capture.")],
        },
        "tolerances": {},
    } | _routing_meta(computed)


def _routing_meta(computed) -> dict:
    """A MoE case's "routing" entry: its MoE layers, k, the margin the generator keeps between
    the k-th and (k+1)-th router logits and the smallest gap in the case (conformance/routing.py)."""
    from lmref.conformance.routing import ROUTING_MARGIN

    expected = computed.expected
    if "routing_min_gap" not in expected:
        return {}
    return {"routing": {
        "layers": [k.removeprefix("routing.") for k in expected if k.startswith("routing.")],
        "k": computed.config.moe.n_experts_per_token,
        "required_margin": ROUTING_MARGIN,
        "smallest_gap": float(expected["routing_min_gap"][0]),
    }}


def case_inputs(computed) -> dict[str, np.ndarray]:
    """inputs.safetensors of a `cases.ComputedCase`: the tokens, and a multimodal case's images
    with the positions of their placeholders."""
    from lmref.spec.vision import image_token_positions

    if computed.pixel_values is None:
        return {"tokens": computed.tokens}
    return {"tokens": computed.tokens, "pixel_values": np.ascontiguousarray(computed.pixel_values),
            "image_positions": image_token_positions(computed.config, computed.tokens)}


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a link at `path` is replaced, never written through."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        tmp.write_bytes(data)
    except BaseException:  # a full disk: no half file left
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_case(root: Path, computed) -> dict[str, str]:
    """Write one case's files; return {relative path: sha256}."""
    rel = f"{computed.arch}/{computed.spec.name}"
    directory = root / rel
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / "case.json", (json.dumps(case_meta(computed), indent=1, sort_keys=True) + "\n").encode())
    _atomic_write(directory / "inputs.safetensors", save(case_inputs(computed)))
    _atomic_write(directory / "expected.safetensors",
                  save({k: np.ascontiguousarray(v) for k, v in computed.expected.items()}))
    return {f"{rel}/{f}": sha256_of(directory / f) for f in CASE_FILES}


def write_manifest(root: Path, files: dict[str, str], generator: str) -> None:
    manifest = {"format_version": FORMAT_VERSION, "generator": generator, "files": dict(sorted(files.items()))}
    _atomic_write(root / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
