"""`--impl onnx` reopening a config's first export with other weights given in memory
(export/reopen.py) instead of writing each weights' export.

- For a dense model whose small weights (GPT-2's biases and norms, 256 bytes at d_model 64)
  the export writes inline, a mixture of experts and LLaVA's three graphs: the sessions
  reopened with weights B give, bit for bit, the outputs of B's export written and opened
  from the same trace (which is a direct export's: tests/test_export_weights_swap.py), the
  logits, the presents, a MoE's router logits and chosen experts and the vision graph's
  features; and onnxruntime copies the values it is given (NaN written into them afterwards
  changes nothing).
- `in_memory` refuses a graph without a Refold and a graph that keeps as external data an
  initializer its Refold does not make (its value would have to come from the file).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lmref.conformance.cases import case_config  # noqa: E402
from lmref.conformance.image_cases import case_pixels, text_ids  # noqa: E402
from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.exporter import export_onnx  # noqa: E402
from lmref.export.multimodal import open_chain, open_graphs  # noqa: E402
from lmref.export.onnx_adapter import OnnxAdapter  # noqa: E402
from lmref.export.reopen import in_memory  # noqa: E402
from lmref.export.vision_graphs import DECODER  # noqa: E402
from lmref.spec import init_params  # noqa: E402
from lmref.spec.params import uniform01  # noqa: E402

ARCHS = ["gpt2", "mixtral-8x7b", "llava-1.5-7b"]


def tokens(config) -> np.ndarray:
    """[2, 7] text tokens (never an image placeholder)."""
    return text_ids(config, uniform01(0, "test_export_reopen", 14).reshape(2, 7))


def chain_outputs(arch: str, config, chain) -> dict[str, np.ndarray]:
    """The chain's decoder outputs on tokens() (4 prefilled, then one a step) and, with a vision
    tower, its vision graph's on two images."""
    outputs = chain.prefill_and_decode_outputs(tokens(config), 4)
    if config.vision is not None:
        outputs |= chain.image_outputs(case_pixels(arch, "reopen", 0, config, 2))
    return outputs


def inline_weights(bundle, kept) -> list[str]:
    """The decoder initializers that hold weights and that the export wrote inline."""
    model = onnx.load(bundle.graph_path(DECODER), load_external_data=False)
    refold = kept.refolds[DECODER]
    weights = set(refold.direct) | set(refold.cones)
    inline = [t.name for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    return [name for name in inline if name in weights]


@pytest.mark.parametrize("arch", ARCHS)
def test_reopened_sessions_give_the_written_exports_outputs(arch, tmp_path):
    config = case_config(arch)
    adapter, first, second = OnnxAdapter(), init_params(config, 0), init_params(config, 1)
    adapter.session(config, first)
    reopened = adapter.session(config, second)
    assert (adapter.exports, adapter.rewrites, adapter.reopened) == (1, 1, 1)
    kept = adapter._templates[config]
    export_onnx(config, second, tmp_path, programs=kept.programs(second), external_data=True)  # as the adapter
    bundle = open_bundle(tmp_path)
    if arch == "gpt2":
        assert inline_weights(bundle, kept)  # these must take the new weights too
    written = chain_outputs(arch, config, open_chain(bundle))
    got = chain_outputs(arch, config, reopened)
    assert got.keys() == written.keys()
    for name in written:
        np.testing.assert_array_equal(got[name], written[name], err_msg=name)
    first_logits = chain_outputs(arch, config, adapter.session(config, first))["logits"]
    assert np.abs(got["logits"] - first_logits).max() > 1e-3  # the new weights, not the first export's


def test_onnxruntime_keeps_its_own_copy_of_the_values_it_is_given():
    config = case_config("gpt2")
    adapter, first, second = OnnxAdapter(), init_params(config, 0), init_params(config, 1)
    adapter.session(config, first)
    expected = chain_outputs("gpt2", config, adapter.session(config, second))
    memory, kept = adapter._in_memory[config], adapter._templates[config]
    given = {role: {name: np.ascontiguousarray(value, np.float32) for name, value in kept.weights(role, second).items()}
             for role in memory.graphs}
    chain = open_graphs(config, memory.graphs, external=given)
    for values in given.values():
        for value in values.values():
            value[...] = np.nan  # the very arrays onnxruntime was handed (float32, contiguous: not copied on the way)
    got = chain_outputs("gpt2", config, chain)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_in_memory_refuses_a_graph_it_cannot_fill(tmp_path):
    config = case_config("gpt2")
    adapter, params = OnnxAdapter(), init_params(config, 0)
    adapter.session(config, params)
    kept = adapter._templates[config]
    export_onnx(config, params, tmp_path, programs=kept.programs(params), external_data=True)
    bundle = open_bundle(tmp_path)
    assert in_memory(bundle, kept) is not None
    assert in_memory(bundle, dataclasses.replace(kept, refolds={})) is None  # no Refold: no values to give
    refold = kept.refolds[DECODER]
    model = onnx.load(bundle.graph_path(DECODER), load_external_data=False)
    external = next(t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    unmade = dataclasses.replace(refold, direct={k: v for k, v in refold.direct.items() if k != external},
                                 cones={k: v for k, v in refold.cones.items() if k != external})
    assert in_memory(bundle, dataclasses.replace(kept, refolds={DECODER: unmade})) is None
