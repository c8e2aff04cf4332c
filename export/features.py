"""The features the ONNX export computes (names: spec/features.py), and the refusal of the rest.

The export wraps impl_torch's Transformer and re-implements none of it (export/decoder.py),
so it computes what the torch twin computes (impl_torch/features.py) as long as each op
traces into the graph: masks from token positions (an explicit band for sliding layers,
floor division for chunks), RoPE angles from `position_ids`, ALiBi distances, and a mixture
of experts' routing (the twin's "dense" dispatch: TopK of the router's scores, a scatter,
every expert on every token), all inside the graph; a vision tower and its projector in a
graph of their own, the image rows merged into the token lookup between two graphs
(export/vision_graphs.py, export/multimodal.py).  `moe.aux_loss` changes the training
loss only, never the logits: the graph outputs each MoE layer's router logits, and the
load-balancing loss is computed from them outside the graph, as the cross-entropy is from
the logits (export/onnx_adapter.py's loss), and so is PaLM's logit z-loss.  tests/test_export_features.py exports a config for every torch feature and
checks the graph against the twin in onnxruntime (and fails when the twin gains a feature
it has no config for); a feature the export cannot express is taken out of FEATURES here,
with the reason, and that test then expects its refusal instead.
"""

from __future__ import annotations

from lmref.impl_torch.features import FEATURES as TORCH_FEATURES
from lmref.spec.config import ModelConfig
from lmref.spec.features import check_supported

BACKEND = "onnx"

# Every torch feature traces into the graphs and matches the twin in onnxruntime: the MoE ones,
# and the image pathway ("vision": three graphs, export/vision_graphs.py).
FEATURES = TORCH_FEATURES


def check_exportable(config: ModelConfig) -> None:
    """Raise UnsupportedFeature naming every feature of `config` the ONNX export lacks (the
    conformance suite's NOT SUPPORTED; `lmref export` reports it as a refused model)."""
    check_supported(config, BACKEND, FEATURES)
