"""export/dynamo.py: the dynamo export with its registry built once gives torch.onnx.export's
graph, byte for byte (a decoder optimized, LLaVA's vision and embed graphs unoptimized), and
builds the registry once."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
ir = pytest.importorskip("onnx_ir")

from lmref.conformance.cases import case_config  # noqa: E402
from lmref.export.dynamo import dynamo_export, torchlib_registry  # noqa: E402
from lmref.export.exporter import OPSET, _quiet_exporter, graph_specs  # noqa: E402
from lmref.export.vision_graphs import DECODER, EMBED, VISION  # noqa: E402
from lmref.spec import init_params  # noqa: E402


def graph_bytes(program) -> bytes:
    return ir.serde.serialize_model(program.model).SerializeToString()


def both_ways(spec, optimize: bool) -> tuple[bytes, bytes]:
    kwargs = dict(dynamic_shapes=spec.dynamic_shapes, input_names=spec.input_names, output_names=spec.output_names)
    with _quiet_exporter(), torch.no_grad():
        ours = dynamo_export(spec.module, spec.example, opset=OPSET, optimize=optimize, **kwargs)
        torchs = torch.onnx.export(spec.module, spec.example, dynamo=True, opset_version=OPSET, optimize=optimize,
                                   verbose=False, **kwargs)
    return graph_bytes(ours), graph_bytes(torchs)


@pytest.mark.parametrize("arch, roles, optimize", [("llama3", [DECODER], True),
                                                   ("llava-1.5-7b", [VISION, EMBED], False)])
def test_the_graph_is_torch_onnx_exports(arch, roles, optimize):
    config = case_config(arch)
    _, specs = graph_specs(config, init_params(config, 0))
    for role in roles:
        ours, torchs = both_ways(specs[role], optimize)
        assert ours == torchs, role
    assert torchlib_registry.cache_info().currsize == 1  # one registry, whatever the graph


def test_an_opset_below_torchlibs_is_refused():
    with pytest.raises(ValueError, match="opset 17 is below torchlib's 18"):
        dynamo_export(torch.nn.Identity(), (torch.ones(1),), dynamic_shapes=None, input_names=["x"],
                      output_names=["y"], opset=17, optimize=False)
