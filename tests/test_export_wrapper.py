"""The export wrapper's math, in torch, without exporting: every preset, a left-padded batch,
a prefill from an empty past and decode steps through the concat cache, against the golden
on each row unpadded.  Plus the refusal of configs the export does not compute, the masks,
and the runtime helpers that need no graph (fast: no dynamo export in this file)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conformance.cases import case_config  # noqa: E402
from conformance.tolerances import DEFAULT_ROWS  # noqa: E402
from export.decoder import OnnxDecoder  # noqa: E402
from export.errors import ExportError, ProviderError  # noqa: E402
from export.masks import causal_slots, positions_from_mask  # noqa: E402
from export.runtime import CPU, CUDA, check_placement, node_providers  # noqa: E402
from export.runtime import positions_from_mask as np_positions_from_mask  # noqa: E402
from export.support import check_exportable, unsupported  # noqa: E402
from export.validate import golden_rows, left_padded_batch, run_graph  # noqa: E402
from spec import PRESETS, init_params, tiny  # noqa: E402
from spec import config as spec_config  # noqa: E402
from tests.torch.helpers import assert_close  # noqa: E402


class TorchStep:
    """OnnxDecoder run eagerly behind export.runtime.DecoderSession's interface."""

    def __init__(self, config, params):
        self.config, self.decoder = config, OnnxDecoder.from_canonical(config, params)

    def empty_past(self, batch):
        shape = (batch, self.config.n_kv_heads, 0, self.config.head_dim)
        return [torch.zeros(shape) for _ in range(2 * self.config.n_layers)]

    @torch.no_grad()
    def step(self, input_ids, attention_mask, past):
        mask = torch.from_numpy(attention_mask)
        positions = positions_from_mask(mask)[:, -input_ids.shape[1]:]
        logits, *present = self.decoder(torch.from_numpy(np.asarray(input_ids)), mask, positions, past)
        return logits.numpy(), present


@pytest.mark.parametrize("arch", list(PRESETS))
def test_wrapper_left_padded_prefill_and_decode_match_the_golden(arch):
    config = case_config(arch)
    params = init_params(config, 5)
    prompt_len = 11 if config.rope_scaling is None else config.rope_scaling.original_max_seq_len + 1
    batch = left_padded_batch(config, prompt_len, pad=4, steps=8, seed=1)
    got = run_graph(TorchStep(config, params), batch)
    for out, ref in zip(got, golden_rows(config, params, batch)):
        assert_close(out[None], ref[None], DEFAULT_ROWS["float32"])


def test_masks_follow_slots_and_padding():
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # row 1: two padding slots
    visible = causal_slots(mask, seq=2)  # the last 2 slots are this step's queries
    assert visible.shape == (2, 1, 2, 5)
    assert visible[0, 0].tolist() == [[True, True, True, True, False], [True] * 5]
    assert visible[1, 0].tolist() == [[False, False, True, True, False], [False, False, True, True, True]]
    assert positions_from_mask(mask).tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]
    assert np_positions_from_mask(mask.numpy()).tolist() == [[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]]


def test_every_preset_is_exportable():
    for name in PRESETS:
        assert unsupported(tiny(name)) == []


def test_a_knob_the_export_does_not_compute_is_refused(monkeypatch):
    # The spec learns per-head q/k norms before the export does: the export refuses by name.
    monkeypatch.setitem(spec_config.IMPLEMENTED, "qk_norm", frozenset({"none", "per_head"}))
    config = tiny("llama3", qk_norm="per_head")
    with pytest.raises(ExportError, match=r"does not implement llama3-tiny's qk_norm 'per_head' \(exportable: none\)"):
        check_exportable(config)
    with pytest.raises(ExportError, match="qk_norm 'per_head'"):
        OnnxDecoder.from_canonical(config, init_params(tiny("llama3"), 0))


def test_a_mask_the_wrapper_does_not_build_is_refused():
    config = tiny("llama3")
    object.__setattr__(config, "sliding_window", 8)  # set past spec validation, which refuses it today
    assert unsupported(config) == ["sliding_window=8 (must be unset)"]


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
    from export.runtime import open_session

    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ProviderError, match=f"{CUDA} is not available in this onnxruntime build"):
        open_session(tmp_path / "model.onnx", CUDA)
