"""The export wrapper's math, in torch, without exporting: every preset and configs with
sliding, chunked and RoPE-less layers, a left-padded batch, a prefill from an empty past and
decode steps through the concat cache, against the golden on each row unpadded (LLaVA's
through its three wrappers, an image in each row, merged as export/multimodal.py merges).  Plus the
refusal of configs the export does not compute, padding as positions, and the runtime
helpers that need no graph (fast: no dynamo export in this file)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lmref.conformance.cases import case_config  # noqa: E402
from lmref.conformance.tolerances import DEFAULT_ROWS  # noqa: E402
from lmref.export.decoder import ConcatCache, OnnxDecoder, graph_output_names, slot_positions  # noqa: E402
from lmref.export.errors import ProviderError  # noqa: E402
from lmref.export.features import FEATURES, check_exportable  # noqa: E402
from lmref.export.multimodal import merge_images  # noqa: E402
from lmref.export.runtime import CPU, CUDA, check_placement, node_providers, positions_from_mask  # noqa: E402
from lmref.export.validate import default_prompt_len, golden_rows, left_padded_batch, run_graph  # noqa: E402
from lmref.export.vision_graphs import OnnxEmbed, OnnxVision  # noqa: E402
from lmref.impl_torch import Transformer  # noqa: E402
from lmref.spec import PRESETS, RopeScaling, init_params, tiny  # noqa: E402
from lmref.spec.features import UnsupportedFeature, required_features  # noqa: E402
from lmref.spec.plan import EMPTY_SLOT  # noqa: E402
from tests.torch.helpers import assert_close  # noqa: E402

# Windows and chunks shorter than the rows, so that the padded rows' masks cut keys off.
WINDOWED = {
    "llama3-sliding-chunked": tiny("llama3", attn_pattern=("sliding", "chunked"), sliding_window=3,
                                   attn_chunk_size=4),
    "llama3-nope-sliding": tiny("llama3", attn_pattern=("global_nope", "sliding"), sliding_window=5),
    "olmo-alibi-sliding": tiny("olmo-alibi", attn_pattern=("sliding", "global"), sliding_window=2),
    "gpt2-chunked": tiny("gpt2", attn_pattern=("chunked",), attn_chunk_size=3),
}
CONFIGS = {arch: case_config(arch) for arch in PRESETS} | WINDOWED


class TorchStep:
    """OnnxDecoder run eagerly behind export.runtime.DecoderSession's interface; with a vision
    tower, MultimodalSession's: OnnxVision, OnnxEmbed, the merge, OnnxEmbedsDecoder."""

    def __init__(self, config, params):
        model = Transformer.from_canonical(config, params)
        self.config, self.decoder = config, OnnxDecoder.of(model)
        if config.vision is not None:
            self.vision, self.embed = OnnxVision(model), OnnxEmbed(model)

    def empty_past(self, batch):
        shape = (batch, self.config.n_kv_heads, 0, self.config.head_dim)
        return [torch.zeros(shape) for _ in range(2 * self.config.n_layers)]

    @torch.no_grad()
    def outputs(self, input_ids, attention_mask, past, pixel_values=None):
        """{name: output} in graph_output_names' order (presents as tensors, fed back as the past)."""
        positions = torch.from_numpy(positions_from_mask(attention_mask)[:, -input_ids.shape[1]:])
        mask = torch.from_numpy(attention_mask)
        first = torch.from_numpy(np.asarray(input_ids))
        if self.config.vision is not None:  # inputs_embeds: the lookup, the images' rows merged in
            rows = self.embed(first).numpy()
            if pixel_values is not None:
                features = self.vision(torch.from_numpy(np.asarray(pixel_values, np.float32)))[0].numpy()
                rows = merge_images(self.config, np.asarray(input_ids), rows, features)
            first = torch.from_numpy(rows)
        out = self.decoder(first, mask, positions, past)
        names = graph_output_names(self.config)
        assert len(out) == len(names)
        return {name: value if name.startswith("present.") else value.numpy() for name, value in zip(names, out)}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_wrapper_left_padded_prefill_and_decode_match_the_golden(name):
    config = CONFIGS[name]
    params = init_params(config, 5)
    prompt_len = default_prompt_len(config, pad=4)  # past RoPE scaling's context and the sliding window
    batch = left_padded_batch(config, prompt_len, pad=4, steps=8, seed=1, params=params)  # MoE: routed tokens
    got = run_graph(TorchStep(config, params), batch)
    for out, ref in zip(got, golden_rows(config, params, batch)):
        assert_close(out[None], ref[None], DEFAULT_ROWS["float32"])


def test_padding_is_expressed_through_positions():
    """Key slots hold cumsum(attention_mask) - 1 on real tokens and EMPTY_SLOT on padding; the
    queries' position_ids (runtime) are the HF ones, clipped at 0 on padding."""
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # row 1: two padding slots
    assert slot_positions(torch.from_numpy(mask)).tolist() == [[0, 1, 2, 3, 4], [EMPTY_SLOT, EMPTY_SLOT, 0, 1, 2]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]


def test_the_concat_cache_appends_and_reads_positions_from_the_mask():
    config = tiny("llama3")
    past = [torch.randn(2, config.n_kv_heads, 3, config.head_dim) for _ in range(2 * config.n_layers)]
    cache = ConcatCache(past, torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]), config)
    k, v = (torch.randn(2, config.n_kv_heads, 2, config.head_dim) for _ in range(2))
    keys, values, positions = cache.append(1, k, v, torch.tensor([[3, 4], [2, 3]]))
    assert torch.equal(keys, torch.cat([past[2], k], dim=2)) and torch.equal(values, torch.cat([past[3], v], dim=2))
    assert cache.present[2] is keys and cache.present[3] is values and cache.present[0] is past[0]
    assert positions.tolist() == [[0, 1, 2, 3, 4], [EMPTY_SLOT, 0, 1, 2, 3]]


def test_every_preset_is_exportable():
    for name in PRESETS:
        check_exportable(tiny(name))
        assert required_features(tiny(name)) <= FEATURES


def test_a_feature_the_export_does_not_compute_is_refused():
    # Dynamic NTK RoPE scaling is in the spec's vocabulary before the twin computes it: the
    # export refuses it by name (UnsupportedFeature: the suite's NOT SUPPORTED).
    config = tiny("llama3", rope_scaling=RopeScaling(kind="dynamic", factor=2.0))
    message = r"the onnx backend does not implement feature\(s\) of config 'llama3-tiny': rope\.scaling\.dynamic"
    with pytest.raises(UnsupportedFeature, match=message) as refused:
        check_exportable(config)
    assert refused.value.missing == ("rope.scaling.dynamic",)
    with pytest.raises(UnsupportedFeature, match="rope.scaling.dynamic"):
        OnnxDecoder.from_canonical(config, init_params(tiny("llama3"), 0))


def _profile(tmp_path, events):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    return node_providers(path)


def test_placement_from_a_profile(tmp_path):
    def node(op, provider):
        return {"cat": "Node", "name": f"{op}_kernel_time", "args": {"op_name": op, "provider": provider}}

    cpu = _profile(tmp_path, [node("MatMul", CPU), node("Softmax", CPU), node("Shape", CPU), {"cat": "Session"}])
    assert cpu == {("MatMul", CPU): 1, ("Softmax", CPU): 1, ("Shape", CPU): 1}
    check_placement(cpu, CPU)
    mixed = _profile(tmp_path, [node("MatMul", CUDA), node("Softmax", CPU), node("Shape", CPU)])
    with pytest.raises(ProviderError, match=f"compute nodes did not run on {CUDA}: Softmax on {CPU}"):
        check_placement(mixed, CUDA)
    check_placement(_profile(tmp_path, [node("MatMul", CUDA), node("Shape", CPU)]), CUDA)  # shape ops may stay


def test_asking_for_a_provider_onnxruntime_lacks_is_an_error(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from lmref.export.runtime import open_session

    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderError, match=f"{CUDA} is not available in this onnxruntime build"):
        open_session(tmp_path / "model.onnx", CUDA)


def test_a_cuda_session_asks_for_float32_not_tf32():
    """onnxruntime's CUDA provider runs float32 MatMuls in TF32 by default (use_tf32=1), which the
    float32 tolerance row does not admit; open_session asks for float32 on CUDA.  Only a GPU shows
    the effect: `lmref validate-onnx --provider cuda` in benchmarks/gpu_rows.sh."""
    from lmref.export.runtime import session_providers

    assert session_providers(CUDA) == [(CUDA, {"use_tf32": "0"}), CPU]
    assert session_providers(CPU) == [CPU]
