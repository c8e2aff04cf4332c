"""Reading an exported directory back (`open_bundle`), with every check `validate-onnx`,
`generate --onnx` and the conformance adapter rely on, in this order:

  export.json   readable, of this format (version 4: it lists every file with its sha256,
                each layer's past length, and the graphs by role; version 3, text only,
                reads as its one decoder graph)
  paths         every graph, every listed file and the tokenizer file resolve inside the
                directory (links followed), and each of them is listed
  config.json   a valid ModelConfig, equal to the config embedded in each graph
  graphs        the roles the config implies (the decoder; with a vision tower also vision
                and embed: export/vision_graphs.py), each a readable ONNX model
  .data files   every external-data file a graph names lies inside the directory, is
                listed, exists beside it, and is long enough for what the graph reads from it
  past_length   export.json's per-layer past lengths are the config's
  sha256        each graph file has the size and sha256 export.json records (before the
                config embedded in it is read: a changed byte is named by its file)
  interfaces    the inputs / outputs the config implies, with its vocab, KV heads, head_dim
                and each past's length axis (a sliding layer's: window_past_sequence); the
                image graphs' shapes (images, patch grid, widths)
  sha256        every other listed file has the size and sha256 export.json records (so a
                changed byte anywhere is named by its file)
  onnx.checker  every graph passes it (path form: external data too)

The hashes say the files are the ones the export wrote; that the weights are the reference's
is validate-onnx's weights check (export/validate.py, check_weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmref.export.decoder import KV, PAST_DIM, WINDOW_PAST_DIM, graph_input_names, graph_output_names, window_pasts
from lmref.export.errors import BundleError
from lmref.export.exporter import (CONFIG_FILE, CONFIG_METADATA_KEY, FORMAT, FORMAT_VERSION, GRAPH_METADATA_KEY,
                                   MANIFEST_FILE, TOKENIZER_FILE, file_digest, past_lengths)
from lmref.export.vision_graphs import DECODER, graph_roles, interface
from lmref.spec.captures import moe_layers
from lmref.spec.config import ConfigError, ModelConfig


@dataclass(frozen=True)
class Bundle:
    """An exported directory that passed the checks."""

    root: Path
    config: ModelConfig
    manifest: dict

    @property
    def model_path(self) -> Path:
        """The decoder graph."""
        return self.root / self.manifest["model"]

    def graph_path(self, role: str) -> Path:
        """The graph of `role` (vision_graphs.graph_roles: "decoder", "vision", "embed")."""
        return self.root / self.manifest["graphs"][role]


def _not_a_file(path: Path) -> str:
    """What is at `path` instead of a file, as a refusal says it."""
    return "a directory, not a file" if path.is_dir() else "no such file"


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BundleError(f"{path}: {_not_a_file(path)} ({what}; is this a directory written by `lmref export`?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested past the stack
        raise BundleError(f"{path}: not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


READABLE_VERSIONS = (3, FORMAT_VERSION)  # 3: a text-only bundle without `graphs` (its decoder alone)


def _read_manifest(root: Path) -> dict:
    """export.json, with version 3's one graph listed as its decoder (`graphs`)."""
    data = _read_json(root / MANIFEST_FILE, "the export manifest")
    if data.get("format") != FORMAT or data.get("format_version") not in READABLE_VERSIONS:
        older = {1: " (format version 1 recorded no sha256 of the files: export it again)",
                 2: " (format version 2 kept every past entry of a sliding layer: export it again)"}
        older = older.get(data.get("format_version"), "") if data.get("format") == FORMAT else ""
        raise BundleError(f"{root / MANIFEST_FILE}: not an {FORMAT} manifest of format version "
                          f"{' or '.join(map(str, READABLE_VERSIONS))}{older}")
    if data["format_version"] == 3:
        data = data | {"graphs": {DECODER: data.get("model")}}
    if not isinstance(data.get("graphs"), dict):
        raise BundleError(f"{root / MANIFEST_FILE}: `graphs` must map each graph's role to its file, "
                          f"got {data.get('graphs')!r}")
    files = data.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
            for v in files.values()):
        raise BundleError(f"{root / MANIFEST_FILE}: `files` must map each file to its sha256 and bytes, got {files!r}")
    return data


def inside(root: Path, name: object, what: str) -> Path:
    """root / name when it resolves (links followed) to a path inside `root`; else BundleError
    naming the path: export.json may not send lmref to a file outside the bundle."""
    where = root / MANIFEST_FILE
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BundleError(f"{where}: the {what} {name!r} is not a file name")
    path = root / name
    real, real_root = path.resolve(), root.resolve()
    if real_root not in real.parents:
        raise BundleError(f"{where}: the {what} {name!r} resolves outside the bundle directory {root} "
                          f"(to {real}); every file of a bundle lies inside it")
    return path


def _check_paths(root: Path, manifest: dict) -> None:
    """The model, each graph, each listed file and the tokenizer file resolve inside `root`,
    and each of them is listed (with its sha256); the decoder graph is the model."""
    files = manifest["files"]
    for name in files:
        inside(root, name, "listed file")
    named = [(manifest.get("model"), "model path"), (CONFIG_FILE, "config")]
    named += [(name, f"{role} graph") for role, name in manifest["graphs"].items()]
    tokenizer = manifest.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, dict):
        raise BundleError(f"{root / MANIFEST_FILE}: the tokenizer entry must be a JSON object or null, got {tokenizer!r}")
    if tokenizer and tokenizer.get("kind") != "byte":  # a byte tokenizer has no file
        named.append((tokenizer.get("file", TOKENIZER_FILE), "tokenizer file"))
    for name, what in named:
        inside(root, name, what)
        if name not in files:
            raise BundleError(f"{root / MANIFEST_FILE}: the {what} {name!r} is not among the files it lists "
                              "with their sha256")
    if manifest["graphs"].get(DECODER) != manifest["model"]:
        raise BundleError(f"{root / MANIFEST_FILE}: the decoder graph {manifest['graphs'].get(DECODER)!r} is not "
                          f"the model path {manifest['model']!r}")


def _check_digests(root: Path, files: dict) -> None:
    """Every listed file has the size and sha256 export.json records."""
    for name, recorded in files.items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{path}: {_not_a_file(path)} (export.json lists it)")
        size = path.stat().st_size
        found = file_digest(path) if size == recorded["bytes"] else {"sha256": "(not computed)", "bytes": size}
        if found != recorded:
            raise BundleError(f"{path}: sha256 differs from the one export.json records (the file has {size} bytes, "
                              f"sha256 {found['sha256'][:16]}; export.json: {recorded['bytes']} bytes, sha256 "
                              f"{recorded['sha256'][:16]}): it changed after the export (corrupted, truncated or "
                              "edited); export it again")


def _read_config(path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(_read_json(path, "the model config"))
    except (ConfigError, TypeError) as e:
        raise BundleError(f"{path}: not a valid lmref config ({e})") from None


def _load_graph(path: Path):
    """The ModelProto without its weights (cheap for any size), or BundleError."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise BundleError(f"{path}: {_not_a_file(path)} (the ONNX graph)")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as e:
        raise BundleError(f"{path}: not a readable ONNX model, the file is corrupted or truncated ({e})") from None


def _check_external_data(root: Path, path: Path, model, files: dict) -> None:
    """Every external-data location named by an initializer lies inside the bundle, is listed,
    exists beside the graph, and holds the bytes the graph reads from it."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    reads: dict[str, tuple[int, str]] = {}  # location -> (end of the furthest read, its initializer)
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            info = ExternalDataInfo(tensor)
            end = (info.offset or 0) + (info.length or 0)
            if end >= reads.get(info.location, (-1, ""))[0]:
                reads[info.location] = (end, tensor.name)
    for location in sorted(reads):
        name = str(path.parent.relative_to(root) / location)  # locations are relative to the graph's directory
        data = inside(root, name, f"external-data file named by {path.name}")
        if not data.is_file():
            raise BundleError(f"{data}: missing external-data file named by {path.name} "
                              f"(keep the .onnx and its data file together, under their exported names)")
        if name not in files:
            raise BundleError(f"{data}: external-data file named by {path.name} that export.json does not list")
        end, initializer = reads[location]
        size = data.stat().st_size
        if size < end:
            raise BundleError(f"{data}: truncated: {size} bytes, but {path.name} reads {end} bytes from it "
                              f"(initializer {initializer}); copy or export it again")


def _check_model(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))  # the path form: external data and > 2 GB graphs
    except (onnx.checker.ValidationError, ValueError, OSError) as e:
        raise BundleError(f"{path}: fails onnx.checker ({str(e).strip().splitlines()[0]})") from None


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def metadata_mismatches(config: ModelConfig, model, role: str) -> list[str]:
    """Differences between `config` and the config embedded in the graph, and its role."""
    try:  # protobuf decodes the strings on access: a non-UTF-8 byte raises here
        metadata = {p.key: p.value for p in model.metadata_props}
        graph_config = json.loads(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"the graph's {CONFIG_METADATA_KEY} metadata is not readable JSON ({e})"]
    if graph_config is None:
        return [f"the graph has no {CONFIG_METADATA_KEY} metadata (not written by lmref export)"]
    ours = json.loads(config.to_json())  # tuples as lists
    problems = [f"{k}: config.json {v!r}, graph {graph_config.get(k)!r}" for k, v in ours.items()
                if graph_config.get(k) != v]
    if metadata.get(GRAPH_METADATA_KEY, role) != role:  # a version 3 graph records no role
        problems.append(f"the graph is the {metadata[GRAPH_METADATA_KEY]!r} graph, export.json lists it as {role!r}")
    return problems


def image_graph_mismatches(config: ModelConfig, model, role: str) -> list[str]:
    """Differences between the vision or embed graph and what `config` implies (vision_graphs.interface)."""
    problems = metadata_mismatches(config, model, role)
    found = ({v.name: _dims(v) for v in model.graph.input}, {v.name: _dims(v) for v in model.graph.output})
    wanted = interface(config, role)
    for kind, got, want in zip(("inputs", "outputs"), found, wanted):
        if got != want:
            problems.append(f"{kind} {got} are not {want}")
    return problems


def graph_mismatches(config: ModelConfig, model) -> list[str]:
    """Differences between what `config` implies and the decoder graph (empty: they agree)."""
    problems = metadata_mismatches(config, model, DECODER)
    names = ([v.name for v in model.graph.input], [v.name for v in model.graph.output])
    if names != (graph_input_names(config), graph_output_names(config)):
        problems.append(f"inputs/outputs {names} are not those of {config.n_layers} layers"
                        + (f" and MoE layers {moe_layers(config)}" if config.moe is not None else "")
                        + (" taking inputs_embeds (a vision tower)" if config.vision is not None else ""))
        return problems
    if config.vision is not None and _dims(model.graph.input[0]) != ["batch", "sequence", config.d_model]:
        problems.append(f"inputs_embeds is {_dims(model.graph.input[0])}, not [batch, sequence, {config.d_model}]")
    outputs = {v.name: _dims(v) for v in model.graph.output}
    if outputs["logits"][2] != config.vocab_size:
        problems.append(f"logits have {outputs['logits'][2]} entries per position, vocab_size is {config.vocab_size}")
    pasts = {v.name: _dims(v)[2] for v in model.graph.input[3:]}
    wanted = [PAST_DIM if keep is None else WINDOW_PAST_DIM for keep in window_pasts(config) for _ in KV]
    problems += [f"{name} has length {got}, the config's layer keeps {want}"
                 for (name, got), want in zip(pasts.items(), wanted) if got != want]
    kv = outputs["present.0.key"]
    if (kv[1], kv[3]) != (config.n_kv_heads, config.head_dim):
        problems.append(f"present keys are [batch, {kv[1]}, seq, {kv[3]}], config has n_kv_heads "
                        f"{config.n_kv_heads}, head_dim {config.head_dim}")
    return problems


def open_bundle(out: str | Path) -> Bundle:
    """The exported directory `out`, checked (see the module docstring), or BundleError."""
    root = Path(out)
    if root.is_file():
        raise BundleError(f"{root}: a file, not the export's directory (give the --out of `lmref export`"
                          f"{', the folder holding it' if root.suffix == '.onnx' else ''})")
    if not root.is_dir():
        raise BundleError(f"{root}: no such directory (give the --out of `lmref export`)")
    manifest = _read_manifest(root)
    _check_paths(root, manifest)
    config = _read_config(root / CONFIG_FILE)
    if list(manifest["graphs"]) != graph_roles(config):
        raise BundleError(f"{root / MANIFEST_FILE}: lists the graphs {list(manifest['graphs'])}, the config "
                          f"{config.name!r} exports {graph_roles(config)}")
    models = {role: _load_graph(root / name) for role, name in manifest["graphs"].items()}
    for role, model in models.items():
        _check_external_data(root, root / manifest["graphs"][role], model, manifest["files"])
    if manifest.get("past_length") != past_lengths(config):
        raise BundleError(f"{root / MANIFEST_FILE}: past_length {manifest.get('past_length')!r} is not the "
                          f"config's {past_lengths(config)!r}")
    graph_files = {name: manifest["files"][name] for name in manifest["graphs"].values()}
    _check_digests(root, graph_files)  # before their embedded config is parsed: a changed byte is named as such
    for role, model in models.items():
        problems = (graph_mismatches(config, model) if role == DECODER
                    else image_graph_mismatches(config, model, role))
        if problems:
            raise BundleError(f"{root / CONFIG_FILE} does not match the graph {manifest['graphs'][role]}: "
                              + "; ".join(problems))
    _check_digests(root, {name: v for name, v in manifest["files"].items() if name not in graph_files})
    for name in manifest["graphs"].values():
        _check_model(root / name)
    return Bundle(root, config, manifest)


def _check_source(bundle: Bundle, source: object) -> None:
    """BundleError naming export.json unless its `source` is what `lmref export` writes: a preset
    (its name giving config.json's model, the seed an integer), a checkpoint (a path), or params."""
    from lmref.spec.presets import tiny

    where = f"{bundle.root / MANIFEST_FILE}: source"
    if not isinstance(source, dict):
        raise BundleError(f"{where} must be an object, got {source!r}")
    kind = source.get("kind")
    if kind == "preset":
        seed, name = source.get("seed"), source.get("preset")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise BundleError(f"{where}: the seed must be a non-negative integer, got {seed!r}")
        try:
            made = tiny(name) if isinstance(name, str) else None
        except KeyError:
            made = None
        if made != bundle.config:
            raise BundleError(f"{where}: the preset {name!r} does not give the model of {bundle.root / CONFIG_FILE}; "
                              "the file was edited (export it again, or pass --checkpoint DIR)")
    elif kind == "checkpoint" and not isinstance(source.get("path"), str):
        raise BundleError(f"{where}: the checkpoint path must be a string, got {source.get('path')!r}")
    elif kind not in ("preset", "checkpoint", "params", None):
        raise BundleError(f"{where}: unknown kind {kind!r} (lmref export writes preset, checkpoint or params)")


def reference_params(bundle: Bundle, checkpoint: str | Path | None = None) -> dict[str, np.ndarray]:
    """The weights the graph was exported from: `checkpoint` when given, else the manifest's
    source (a preset's init, or the checkpoint directory it names)."""
    from lmref.export.exporter import read_checkpoint

    source = bundle.manifest.get("source") or {}
    if checkpoint is None:
        _check_source(bundle, source)
    if checkpoint is None and source.get("kind") == "preset":
        from lmref.spec.params import init_params

        return init_params(bundle.config, source["seed"])
    if checkpoint is None and source.get("kind") != "checkpoint":
        raise BundleError(f"{bundle.root / MANIFEST_FILE} records no source of the weights; pass --checkpoint DIR")
    path = checkpoint if checkpoint is not None else source["path"]
    if checkpoint is None and not Path(path).is_dir():
        raise BundleError(f"{bundle.root / MANIFEST_FILE}: the checkpoint it was exported from, {path}, is gone; "
                          "pass --checkpoint DIR")
    _, config, params, _ = read_checkpoint(path)
    if config != bundle.config:
        raise BundleError(f"{path}: its config differs from {bundle.root / CONFIG_FILE}; not the exported model")
    return params
