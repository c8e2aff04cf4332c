"""`export_onnx`: an lmref model to an ONNX directory that onnxruntime runs and validates.

    OUT/
        model.onnx        the decoder graph (prefill and decode, export/decoder.py)
        model.onnx.data   its weights, when stored as external data (see below)
        vision.onnx       with a vision tower: the tower and projector, and the token
        embed.onnx        embedding (export/vision_graphs.py; model.onnx then takes
                          inputs_embeds), each with its .data file under external data
        config.json       the ModelConfig (also embedded in the graph's metadata)
        export.json       the manifest: format, opset, names, per-layer past lengths
                          (`past_length`), the graphs by role (`graphs`), versions, the weights' source,
                          the tokenizer, and `files`: the sha256 and size of every file above
                          (export/bundle.py verifies them when the directory is opened)
        tokenizer.json    copied from a training checkpoint that has one
        genai_config.json with --genai-eos: what onnxruntime-genai's generator reads to run
                          the decoder (export/genai.py)
        .lmref-output.json  the marker of spec/outputs.py (kind "onnx-export")

OUT must be (spec/outputs.py) a new or empty directory, or one an earlier export marked as
its own, and never the checkpoint it reads: that is checked before the trace, and OUT is
created and marked after it, once the traced graph is known to suit every request (so a
refused --genai-eos leaves no directory behind).  The files are written into a
temporary directory inside OUT and moved into place once all of them exist; only then are
the files of the previous export that the new one does not write removed, and only those
its export.json lists.  A file in OUT under a name the export writes that the previous
export.json does not list is the user's: the export is refused before anything is moved.

The route: `torch.onnx.export(dynamo=True)` (the
TorchScript exporter is deprecated and capped at opset 20, pytorch#156023) with `dynamic_shapes`, at
opset 18, the opset torchlib is written in (no version conversion, pytorch#161056) and one
that every onnxruntime CPU and CUDA build of the last years runs.  Weights go to external
data above EXTERNAL_DATA_BYTES or when asked (protobuf stops at 2 GB; the data file
keeps the name the exporter gives it, `model.onnx.data`, beside the graph).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

import lmref
from lmref.export.decoder import (ATTN_IMPL, DTYPE, KV, PAST_DIM, WINDOW_PAST_DIM, OnnxDecoder, dynamic_shapes,
                                  example_inputs, graph_input_names, graph_output_names, window_pasts)
from lmref.export.errors import ExportError
from lmref.export.features import check_exportable
from lmref.export.fusable import reciprocal_products_as_divisions
from lmref.export.genai import GENAI_CONFIG_FILE, check_genai_graph, check_genai_request, genai_config
from lmref.export.vision_graphs import DECODER, EMBED, N_IMAGES_DIM, VISION, GraphSpec, graph_roles, image_graphs
from lmref.spec.config import ModelConfig
from lmref.spec.errors import OutputError
from lmref.spec.outputs import check_output, claim, json_object_or_none
from lmref.spec.params import param_count

OPSET = 18
# Version 2: export.json lists every file with its sha256 and size ("files").  Version 3: a
# sliding layer's past and present hold its last W - 1 entries only ("past_length").  Version
# 4: "graphs" lists the graphs by role, three with a vision tower (a version 3 bundle, text
# only, reads as its one decoder graph: export/bundle.py).
FORMAT, FORMAT_VERSION = "lmref-onnx", 4
OUTPUT_KIND = "onnx-export"  # the kind in spec/outputs.py's marker
MODEL_FILE, CONFIG_FILE, MANIFEST_FILE, TOKENIZER_FILE = "model.onnx", "config.json", "export.json", "tokenizer.json"
GRAPH_FILES = {VISION: "vision.onnx", EMBED: "embed.onnx", DECODER: MODEL_FILE}  # by role (vision_graphs.py)
GRAPH_METADATA_KEY = "lmref.graph"  # the graph's role, in each graph's metadata
EXTERNAL_DATA_BYTES = 1 << 30  # 1 GiB of float32 weights and more: external data
CONFIG_METADATA_KEY = "lmref.config"
CONTRIB_METADATA_KEY = "lmref.ort_contrib"  # {fusion: count} of a decoder exported with --ort-contrib
# Symbolic dim names of the graph's inputs and outputs; the exporter names the mask's length
# itself (a derived dim), so it is renamed to match the presents (distinct names per axis:
# microsoft/onnxruntime#11438).
TOTAL_DIM = f"{PAST_DIM} + sequence"


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's chatter: its progress lines, the torchvision-op notes of its
    registry, and the warning that the shared batch Dim is reused across inputs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def window_present_dim(keep: int) -> str:
    """The name of a sliding layer's present length (window_pasts: keep = W - 1)."""
    return f"min({WINDOW_PAST_DIM} + sequence, {keep})"


def past_lengths(config: ModelConfig) -> list[str]:
    """export.json `past_length`: per layer, the length of its past in terms of the
    positions before the step (`past_sequence`): all of them, or a sliding layer's last W - 1."""
    return [PAST_DIM if keep is None else f"min({PAST_DIM}, {keep})" for keep in window_pasts(config)]


def _name_axes(program, config: ModelConfig) -> None:
    """Rename the attention mask's derived length axis (e.g. 's53') to TOTAL_DIM, a full
    layer's present length to TOTAL_DIM too (the exporter writes the sum in the order it met
    the dims: 'sequence + past_sequence' when the first input is inputs_embeds), and a
    sliding layer's derived present length (Max(0, ...)) to window_present_dim."""
    import onnx_ir as ir

    graph = program.model.graph
    mask = next(v for v in graph.inputs if v.name == "attention_mask")
    mask.shape = ir.Shape([mask.shape[0], ir.SymbolicDim(TOTAL_DIM)])
    keeps = [keep for keep in window_pasts(config) for _ in KV]
    for value, keep in zip(graph.outputs[1:], keeps):  # the presents, in present_names' order
        if not isinstance(value.shape[2], int):  # W = 1: a static 0
            dims = list(value.shape)
            name = TOTAL_DIM if keep is None else window_present_dim(keep)
            value.shape = ir.Shape([*dims[:2], ir.SymbolicDim(name), dims[3]])


def export_graph(spec: GraphSpec, *, optimize: bool = True):
    """The ONNXProgram of a vision_graphs.GraphSpec: dynamo export at OPSET, optimized
    (onnxscript's constant folding and cleanups) unless asked not to (export/reweight.py).
    A decoder whose layers repeat a few kinds is traced with one layer of each kind and the
    others stamped from it, whole or sublayer by sublayer (export/stamping.py); where its
    layers are not separable, in full, with a warning that names the check they failed."""
    from lmref.export.stamp_graph import StampError
    from lmref.export.stamping import stamp_traced, traced_spec

    traced = traced_spec(spec)
    if traced is None:
        return _exported(spec, optimize)
    program = _exported(traced, optimize=False)
    try:
        stamp_traced(traced, program)
    except StampError as e:
        warnings.warn(f"export: every layer traced, none stamped: {e} (the same graph, a slower export; "
                      "docs/onnx.md \"The export\")", stacklevel=2)
        return _exported(spec, optimize)
    if optimize:
        program.optimize()
    return program


def _exported(spec: GraphSpec, optimize: bool):
    """torch.onnx.export's ONNXProgram of the spec at OPSET (export/dynamo.py: its registry built once)."""
    import torch

    from lmref.export.dynamo import dynamo_export

    with _quiet_exporter(), torch.no_grad():
        return dynamo_export(spec.module, spec.example, dynamic_shapes=spec.dynamic_shapes,
                             input_names=spec.input_names, output_names=spec.output_names, opset=OPSET,
                             optimize=optimize)


def graph_specs(config: ModelConfig, params: dict[str, np.ndarray]) -> tuple[object, dict[str, GraphSpec]]:
    """(the float32 torch twin holding `params`, {role: GraphSpec} of its graphs in graph_roles' order)."""
    from lmref.impl_torch import Transformer

    check_exportable(config)
    model = Transformer.from_canonical(config, params, dtype=DTYPE, attn_impl=ATTN_IMPL)
    specs = image_graphs(model) if config.vision is not None else {}
    specs[DECODER] = GraphSpec(OnnxDecoder.of(model), example_inputs(config), dynamic_shapes(config),
                               graph_input_names(config), graph_output_names(config))
    return model, {role: specs[role] for role in graph_roles(config)}


def trace(config: ModelConfig, params: dict[str, np.ndarray], *, ort_contrib: bool = False) -> dict:
    """{role: torch.onnx ONNXProgram} of (config, params), in GRAPH_FILES' order: the decoder,
    and with a vision tower the vision and embed graphs, all from one float32 model.
    `ort_contrib`: the decoder with onnxruntime's contrib ops (export/contrib.py)."""
    _, specs = graph_specs(config, params)
    return finish_programs(config, {role: export_graph(spec) for role, spec in specs.items()}, ort_contrib=ort_contrib)


def finish_programs(config: ModelConfig, programs: dict, *, ort_contrib: bool = False) -> dict:
    """The optimized `programs` with the decoder's axes named, with `ort_contrib` its contrib ops
    (export/contrib.py; their names in the metadata's CONTRIB_METADATA_KEY), the norms left in
    the form onnxruntime fuses, and each graph's metadata set."""
    _name_axes(programs[DECODER], config)
    if ort_contrib:
        from lmref.export.contrib import ort_contrib_ops

        fused = ort_contrib_ops(programs[DECODER].model, config.max_seq_len,
                                (config.n_layers, config.n_heads, config.n_kv_heads))
        programs[DECODER].model.metadata_props[CONTRIB_METADATA_KEY] = json.dumps(fused, sort_keys=True)
    for role, program in programs.items():
        reciprocal_products_as_divisions(program.model.graph)  # RMSNorm fuses in onnxruntime (export/fusable.py)
        program.model.metadata_props[CONFIG_METADATA_KEY] = config.to_json()
        program.model.metadata_props["lmref.format"] = f"{FORMAT}/{FORMAT_VERSION}"
        program.model.metadata_props[GRAPH_METADATA_KEY] = role
    return programs


def tool_versions() -> dict[str, str]:
    """The versions of the tools that make the graph (export.json `versions`)."""
    import onnx
    import onnxscript
    import torch

    return {"lmref": lmref.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__}


def file_digest(path: Path) -> dict:
    """{"sha256", "bytes"} of a file (read in 1 MiB chunks: any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}


def manifest(config: ModelConfig, *, external_data: bool, source: dict, tokenizer: dict | None,
             files: dict[str, dict] | None = None, ort_contrib: dict | None = None) -> dict:
    """The export.json of an export; `files`: {name: file_digest} of every file it wrote;
    `ort_contrib`: {fusion: count} of a decoder with onnxruntime's contrib ops (export/contrib.py),
    whose graph then runs in onnxruntime only."""
    axes = {"batch": "batch", "sequence": "sequence", "past": PAST_DIM, "window_past": WINDOW_PAST_DIM,
            "total": TOTAL_DIM} | ({"images": N_IMAGES_DIM} if config.vision is not None else {})
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": MODEL_FILE,
        "graphs": {role: GRAPH_FILES[role] for role in graph_roles(config)},
        "external_data": external_data, "opset": OPSET, "dtype": "float32",
        "inputs": graph_input_names(config), "outputs": graph_output_names(config),
        "axes": axes, "past_length": past_lengths(config),
        "source": source, "tokenizer": tokenizer, "versions": tool_versions(), "files": files or {},
    } | ({"ort_contrib": ort_contrib} if ort_contrib is not None else {})


def _own_files(out: Path) -> set[str]:
    """The names the export.json in `out` lists as written by an earlier export (plain names
    only: a listed path that is not a file directly in `out` is never touched)."""
    data = json_object_or_none(out / MANIFEST_FILE)
    if data is None or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        return set()
    return {name for name in data["files"] if isinstance(name, str) and name and Path(name).name == name
            and name not in (".", "..")} | {MANIFEST_FILE}


def _install(staging: Path, out: Path, written: list[str], info: dict) -> None:
    """Move the `written` files from `staging` into `out` with their export.json `info`,
    replacing the previous export (only the files its export.json lists).

    OutputError, before anything is touched, when a name to write is taken by a file the
    previous export.json does not list.  The order keeps every state a crash can leave
    re-exportable and never a bundle that opens: the previous export's files the new one does
    not write go first, then the new export.json (atomically), then the new files (until
    they are all in place, their sha256 differ from what export.json records)."""
    own = _own_files(out)
    for name in [*written, MANIFEST_FILE]:
        if (out / name).exists() and name not in own:
            raise OutputError(f"--out {out}: {out / name} is in the way and export.json does not list it as "
                              "written by `lmref export`; move it, or give a new or empty directory")
    for name in sorted(own - {*written, MANIFEST_FILE}):
        if (out / name).is_file() and not (out / name).is_symlink():
            (out / name).unlink()
    (staging / MANIFEST_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (staging / MANIFEST_FILE).replace(out / MANIFEST_FILE)
    for name in written:
        (staging / name).replace(out / name)


def export_onnx(config: ModelConfig, params: dict[str, np.ndarray], out: str | Path, *,
                external_data: bool | None = None, source: dict | None = None,
                tokenizer: dict | None = None, tokenizer_file: Path | None = None,
                inputs: tuple[str | Path, ...] = (), programs: dict | None = None, ort_contrib: bool = False,
                genai_eos: int | None = None) -> Path:
    """Export (config, params) to the directory `out` (see the module docstring); check each
    graph with onnx.checker; return the decoder's .onnx path.

    `external_data`: None decides by size (EXTERNAL_DATA_BYTES).  `source` ({"kind":
    "preset", "preset", "seed"} or {"kind": "checkpoint", "path"}) tells `validate-onnx` where
    the reference weights are; `tokenizer` (a train/tokenizer.py `info`) and `tokenizer_file`
    are what `generate --onnx` decodes with.  `inputs`: the paths the export reads, which
    `out` may not be, lie in or hold (OutputError, spec/outputs.py).  `programs`: the graphs
    of (config, params) already traced (`trace`'s, or export/reweight.py's), written as given.
    `ort_contrib`: trace the decoder with onnxruntime's contrib ops (export/contrib.py); not
    with `programs` (trace them with it instead).  `genai_eos`: write genai_config.json, with
    this end token, for onnxruntime-genai's generator (export/genai.py; GenaiError where it
    cannot run the graph).
    """
    import onnx

    check_exportable(config)
    if ort_contrib and programs is not None:
        raise ValueError("ort_contrib traces the graphs itself: pass trace(..., ort_contrib=True)'s programs instead")
    if genai_eos is not None:
        check_genai_request(config, genai_eos, ort_contrib or programs is not None)
    if external_data is None:
        external_data = 4 * param_count(config) >= EXTERNAL_DATA_BYTES
    out = check_output(out, OUTPUT_KIND, inputs=inputs)  # a bad OUT is refused before the trace
    programs = trace(config, params, ort_contrib=ort_contrib) if programs is None else programs
    contrib = programs[DECODER].model.metadata_props.get(CONTRIB_METADATA_KEY)
    if genai_eos is not None:  # what the trace fused decides it: refused before OUT is touched
        check_genai_graph(config, json.loads(contrib) if contrib else None)
    out = claim(out, OUTPUT_KIND, inputs=inputs)
    staging = Path(tempfile.mkdtemp(prefix=".lmref-export-", dir=out))
    try:
        for role, program in programs.items():
            program.save(staging / GRAPH_FILES[role], external_data=external_data)
            onnx.checker.check_model(str(staging / GRAPH_FILES[role]))  # the path form reads external data
        (staging / CONFIG_FILE).write_text(config.to_json() + "\n")
        if genai_eos is not None:
            (staging / GENAI_CONFIG_FILE).write_text(json.dumps(genai_config(config, MODEL_FILE, genai_eos), indent=2)
                                                     + "\n")
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, staging / TOKENIZER_FILE)
            if tokenizer:
                tokenizer = tokenizer | {"file": TOKENIZER_FILE}  # the name it has here
        written = sorted(p.name for p in staging.iterdir())
        files = {name: file_digest(staging / name) for name in written}
        info = manifest(config, external_data=external_data, source=source or {"kind": "params"},
                        tokenizer=tokenizer, files=files, ort_contrib=json.loads(contrib) if contrib else None)
        _install(staging, out, written, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / MODEL_FILE


def export_preset(name: str, seed: int, out: str | Path, *, external_data: bool | None = None,
                  ort_contrib: bool = False, genai_eos: int | None = None) -> Path:
    """Export tiny(name) with init_params(config, seed)."""
    from lmref.spec.params import init_params
    from lmref.spec.presets import tiny

    config = tiny(name)
    return export_onnx(config, init_params(config, seed), out, external_data=external_data,
                       source={"kind": "preset", "preset": name, "seed": seed}, ort_contrib=ort_contrib,
                       genai_eos=genai_eos)


def read_checkpoint(path: str | Path) -> tuple[Path, ModelConfig, dict[str, np.ndarray], dict | None]:
    """(directory, config, params, tokenizer info) of an lmref checkpoint directory, or of a
    training checkpoint or run directory (`lmref train`'s, whose trainer state names the
    tokenizer)."""
    from lmref.convert.checkpoint import load_checkpoint, written_by_training

    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint directory")
    if written_by_training(path):
        from lmref.train.checkpoint import load_model

        directory, config, params, state = load_model(path)
        return directory, config, params, state.get("tokenizer")
    config, params = load_checkpoint(path)
    return path, config, params, None


def export_checkpoint(path: str | Path, out: str | Path, *, external_data: bool | None = None,
                      ort_contrib: bool = False, genai_eos: int | None = None) -> Path:
    """Export a checkpoint directory (see read_checkpoint), with its tokenizer when it has one."""
    directory, config, params, tokenizer = read_checkpoint(path)
    check_exportable(config)
    tokenizer_file = directory / TOKENIZER_FILE
    return export_onnx(config, params, out, external_data=external_data,
                       source={"kind": "checkpoint", "path": str(directory.resolve())}, tokenizer=tokenizer,
                       tokenizer_file=tokenizer_file if tokenizer_file.is_file() else None,
                       inputs=(path, directory), ort_contrib=ort_contrib, genai_eos=genai_eos)
