"""A config's first export reopened with other weights, given in memory: how `--impl onnx`
opens each later golden case of a config without writing or reading its weights
(export/onnx_adapter.py).

export/reweight.py makes the graphs of new weights from a config's one trace, and where
export/refold.py accounts for every initializer of an optimized graph (a Template's
`refolds`), those graphs differ from the first weights' only in the values of the
initializers that hold weights (tests/test_export_weights_swap.py: the serialized graph byte
for byte).  So an `InMemory` keeps each graph file of the config's first export as bytes, with
every initializer that holds weights marked as external data, and each later case opens those
bytes in onnxruntime with the initializers' values for its weights given in memory
(onnxruntime's add_external_initializers, which puts them into the graph as it loads, before
any optimization: runtime.open_session).  Nothing is written: for llama4-maverick's 167 MB
case that is 0.3 to 0.5 s of a re-weighted case's 0.6 to 1 s (writing the external data,
hashing it, checking and reading it back).

`in_memory` gives None (the adapter then writes every case's export, as before) unless every
graph has a Refold, and every initializer a graph keeps as external data holds weights (a
constant stored there would need its file).  An initializer that holds weights and was small
enough to be written inline is marked external here, so that it too takes the new value;
every other initializer is one the Refold found free of weights: a constant of the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmref.export.bundle import Bundle
from lmref.export.multimodal import open_graphs
from lmref.export.reweight import Template
from lmref.spec.config import ModelConfig

MEMORY = "lmref-in-memory"  # the external data location of a marked initializer: never a file


@dataclass(frozen=True)
class InMemory:
    """{role: a graph of the config's first export, serialized, its weights as external data}."""

    config: ModelConfig
    graphs: dict[str, bytes]

    def open(self, kept: Template, params: dict[str, np.ndarray], provider: str):
        """The graphs holding `params` in onnxruntime (export/multimodal.py open_graphs);
        ReweightError from the Template when `params` do not fit it."""
        weights = {role: kept.weights(role, params) for role in self.graphs}
        return open_graphs(self.config, self.graphs, provider, external=weights)


def in_memory(bundle: Bundle, kept: Template) -> InMemory | None:
    """The InMemory of the bundle that `kept` exported (module docstring), or None."""
    import onnx

    graphs = {}
    for role in bundle.manifest["graphs"]:
        if role not in kept.refolds:
            return None
        model = onnx.load(bundle.graph_path(role), load_external_data=False)
        weights = set(kept.refolds[role].direct) | set(kept.refolds[role].cones)
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        external = {name for name, tensor in initializers.items() if tensor.data_location == onnx.TensorProto.EXTERNAL}
        if not external <= weights or not weights <= set(initializers):
            return None
        for name in weights:
            mark_external(initializers[name])
        graphs[role] = model.SerializeToString()
    return InMemory(bundle.config, graphs)


def mark_external(tensor) -> None:
    """The TensorProto's data replaced by a reference to external data at MEMORY (its dims and
    type kept): onnxruntime must be given its value (runtime.open_session `external`)."""
    import onnx

    for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", MEMORY
