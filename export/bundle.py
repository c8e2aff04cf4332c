"""Reading an exported directory back (`open_bundle`), with every check `validate-onnx`,
`generate --onnx` and the conformance adapter rely on:

  export.json   readable, of this format
  config.json   a valid ModelConfig, equal to the config embedded in the graph
  model.onnx    a readable ONNX model that passes onnx.checker (path form: external data too)
  .data files   every external-data file the graph names exists beside it
  the graph     the inputs / outputs the config implies, with its vocab, KV heads, head_dim
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmref.export.decoder import input_names, output_names
from lmref.export.errors import BundleError
from lmref.export.exporter import CONFIG_FILE, CONFIG_METADATA_KEY, FORMAT, FORMAT_VERSION, MANIFEST_FILE
from lmref.spec.config import ConfigError, ModelConfig


@dataclass(frozen=True)
class Bundle:
    """An exported directory that passed the checks."""

    root: Path
    config: ModelConfig
    manifest: dict

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest["model"]


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BundleError(f"{path}: no such file ({what}; is this a directory written by `lmref export`?)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_manifest(root: Path) -> dict:
    data = _read_json(root / MANIFEST_FILE, "the export manifest")
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root / MANIFEST_FILE}: not an {FORMAT} manifest of format version {FORMAT_VERSION}")
    return data


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
        raise BundleError(f"{path}: no such file (the ONNX graph)")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as e:
        raise BundleError(f"{path}: not a readable ONNX model, the file is corrupted or truncated ({e})") from None


def _check_external_data(path: Path, model) -> None:
    """Every external-data location named by an initializer exists beside the graph."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    locations = {ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)}
    for location in sorted(locations):
        if not (path.parent / location).is_file():
            raise BundleError(f"{path.parent / location}: missing external-data file named by {path.name} "
                              f"(keep the .onnx and its data file together, under their exported names)")


def _check_model(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))  # the path form: external data and > 2 GB graphs
    except (onnx.checker.ValidationError, ValueError, OSError) as e:
        raise BundleError(f"{path}: fails onnx.checker ({str(e).strip().splitlines()[0]})") from None


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def graph_mismatches(config: ModelConfig, model) -> list[str]:
    """Differences between what `config` implies and the graph (empty: they agree)."""
    problems = []
    embedded = {p.key: p.value for p in model.metadata_props}.get(CONFIG_METADATA_KEY)
    if embedded is None:
        problems.append(f"the graph has no {CONFIG_METADATA_KEY} metadata (not written by lmref export)")
    else:
        graph_config, ours = json.loads(embedded), json.loads(config.to_json())  # JSON both: tuples as lists
        problems += [f"{k}: config.json {v!r}, graph {graph_config.get(k)!r}"
                     for k, v in ours.items() if graph_config.get(k) != v]
    names = ([v.name for v in model.graph.input], [v.name for v in model.graph.output])
    if names != (input_names(config.n_layers), output_names(config.n_layers)):
        problems.append(f"inputs/outputs {names} are not those of {config.n_layers} layers")
        return problems
    outputs = {v.name: _dims(v) for v in model.graph.output}
    if outputs["logits"][2] != config.vocab_size:
        problems.append(f"logits have {outputs['logits'][2]} entries per position, vocab_size is {config.vocab_size}")
    kv = outputs["present.0.key"]
    if (kv[1], kv[3]) != (config.n_kv_heads, config.head_dim):
        problems.append(f"present keys are [batch, {kv[1]}, seq, {kv[3]}], config has n_kv_heads "
                        f"{config.n_kv_heads}, head_dim {config.head_dim}")
    return problems


def open_bundle(out: str | Path) -> Bundle:
    """The exported directory `out`, checked (see the module docstring), or BundleError."""
    root = Path(out)
    if not root.is_dir():
        raise BundleError(f"{root}: no such directory (give the --out of `lmref export`)")
    manifest = _read_manifest(root)
    config = _read_config(root / CONFIG_FILE)
    path = root / manifest.get("model", "")
    model = _load_graph(path)
    _check_external_data(path, model)
    _check_model(path)
    problems = graph_mismatches(config, model)
    if problems:
        raise BundleError(f"{root / CONFIG_FILE} does not match the graph {path.name}: " + "; ".join(problems))
    return Bundle(root, config, manifest)


def reference_params(bundle: Bundle, checkpoint: str | Path | None = None) -> dict[str, np.ndarray]:
    """The weights the graph was exported from: `checkpoint` when given, else the manifest's
    source (a preset's init, or the checkpoint directory it names)."""
    from lmref.export.exporter import read_checkpoint

    source = bundle.manifest.get("source") or {}
    if checkpoint is None and source.get("kind") == "preset":
        from lmref.spec.params import init_params

        return init_params(bundle.config, int(source["seed"]))
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
