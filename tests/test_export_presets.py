"""Every preset exports (dynamo, opset 18) and validates in onnxruntime against the golden and
the torch twin: a left-padded prefill from an empty past, then 8 decode steps through the
graph's own cache.  Each export takes seconds, so the default run keeps one preset per
feature set and marks the rest slow:

  gpt2        learned positions, LayerNorm with bias, tied head
  llama3.1    RoPE halves with GQA, and the llama3 frequency scaling (validated past the
              tiny config's original context, where the scaling is active)
  olmo-alibi  ALiBi with 6 heads (not a power of two: the interleaved slopes; conformance
              case_config)
  olmo        the non-parametric LayerNorm
  bloom-560m  the LayerNorm after the token embedding, the truncated tanh GELU (ALiBi, 6 heads)
  dbrx,       mixtures of experts (routed in the graph: TopK, then scatter; their router logits
  qwen1.5-moe, and chosen experts are outputs, and validate-onnx compares the choice)
  llama4-scout
  palm-8b     a tied head whose logits are scaled by d_model^-0.5, multi-query, one shared norm
  llava-1.5-7b  the image pathway: three graphs (vision, embed, a decoder taking inputs_embeds)
              chained, validated on rows that hold an image (tests/test_export_llava.py)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lmref.conformance.cases import case_config  # noqa: E402
from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.decoder import WINDOW_PAST_DIM, graph_output_names, window_pasts  # noqa: E402
from lmref.export.exporter import OPSET, TOTAL_DIM, export_onnx, past_lengths, window_present_dim  # noqa: E402
from lmref.export.decoder import graph_input_names  # noqa: E402
from lmref.export.multimodal import open_chain  # noqa: E402
from lmref.export.runtime import CPU  # noqa: E402
from lmref.export.validate import DEFAULT_STEPS, default_prompt_len, validate  # noqa: E402
from lmref.spec import PRESETS, init_params  # noqa: E402
from lmref.spec.captures import moe_layers  # noqa: E402

# A representative few in the default run (learned positions, RoPE scaling, ALiBi with 6 heads
# by Press's rule (MPT) and by OLMo's,
# a weightless norm, a sliding window; Gemma 2's softcaps and sandwich norms, Gemma 3's local
# RoPE and per-head QK norm, OLMo 2's post-sublayer norms; DBRX's q/k/v clipping and softmax
# top-4 of 16 experts, Qwen1.5-MoE's top-k without renormalisation and its gated shared
# expert, Llama 4's sigmoid top-1 scaling the expert input, L2 QK norm and NoPE temperature;
# GPT-J's parallel block on one norm, interleaved RoPE on a quarter of the head, head bias;
# BLOOM's embedding LayerNorm and truncated tanh GELU, Phi-3-mini-128k's LongRoPE, PaLM's logit
# scale on a tied head with multi-query attention and SwiGLU); every other preset under
# `make test-thorough`.
FAST = ["gpt2", "llama3.1", "olmo", "mpt", "mistral-7b", "gemma2-27b", "gemma3-4b", "olmo2-7b", "dbrx",
        "qwen1.5-moe-a2.7b", "llama4-scout", "gptj-6b", "bloom-560m", "phi-3-mini-128k", "palm-8b",
        "olmo-alibi", "llava-1.5-7b"]
SLOW = [name for name in PRESETS if name not in FAST]


def test_the_default_run_covers_the_features_of_every_preset():
    """What the slow presets need, some fast one exercises (each feature is exported in the
    default run; the slow presets differ only in sizes and numbers).  The training objective's
    features are not in the graph (OLMoE's z-loss: tests/test_export_moe.py)."""
    from lmref.spec.features import OBJECTIVE, required_features
    from lmref.spec.presets import tiny

    fast = frozenset().union(*(required_features(tiny(name)) for name in FAST))
    for name in SLOW:
        assert required_features(tiny(name)) - set(OBJECTIVE) <= fast, name


@pytest.fixture(scope="module", params=FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def exported(request, tmp_path_factory):
    """(bundle, params) of case_config(arch) exported once for this module."""
    config = case_config(request.param)
    params = init_params(config, 7)
    out = tmp_path_factory.mktemp(request.param)
    export_onnx(config, params, out)
    return open_bundle(out), params


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graph_interface(exported):
    bundle, _ = exported
    c = bundle.config
    model = onnx.load(str(bundle.model_path))
    onnx.checker.check_model(str(bundle.model_path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    assert bundle.manifest["opset"] == OPSET and bundle.manifest["external_data"] is False
    inputs = {v.name: _dims(v) for v in model.graph.input}
    outputs = {v.name: _dims(v) for v in model.graph.output}
    assert list(inputs) == graph_input_names(c) and list(outputs) == graph_output_names(c)
    assert inputs["position_ids"] == ["batch", "sequence"]
    first = ["batch", "sequence"] + ([c.d_model] if c.vision is not None else [])  # input_ids or inputs_embeds
    assert inputs[graph_input_names(c)[0]] == first
    assert inputs["attention_mask"] == ["batch", TOTAL_DIM]
    assert outputs["logits"] == ["batch", "sequence", c.vocab_size]
    for i, keep in enumerate(window_pasts(c)):  # a sliding layer's past: its last W - 1 entries
        past, present = ("past_sequence", TOTAL_DIM) if keep is None else (WINDOW_PAST_DIM, window_present_dim(keep))
        assert inputs[f"past_key_values.{i}.value"] == ["batch", c.n_kv_heads, past, c.head_dim]
        assert outputs[f"present.{i}.key"] == ["batch", c.n_kv_heads, present, c.head_dim]
    for i in moe_layers(c):  # a mixture of experts: its router logits and chosen experts (export/decoder.py)
        assert outputs[f"router_logits.{i}"] == ["batch", "sequence", c.moe.n_experts]
        assert outputs[f"selected_experts.{i}"] == ["batch", "sequence", c.moe.n_experts_per_token]
    assert bundle.manifest["past_length"] == past_lengths(c)
    assert json.loads(bundle.model_path.parent.joinpath("config.json").read_text()) == json.loads(c.to_json())


def test_validates_against_the_golden_and_torch(exported):
    bundle, params = exported
    lines: list[str] = []
    checks = validate(bundle, params, [CPU], log=lines.append)
    assert [c.failed for c in checks] == [[]] * len(checks), "\n".join(lines)
    routing = [("golden", "routing")] if bundle.config.moe is not None else []  # export/routing.py
    vision = [("golden", f"{name} (vision.onnx alone)") for name in ("image_features", "vision_features")
              if bundle.config.vision is not None]  # export/validate_vision.py
    assert [(c.reference.split()[0], c.phase) for c in checks] == [
        ("golden", "prefill"), ("golden", f"decode ({DEFAULT_STEPS} steps)"),
        ("torch", "prefill"), ("torch", f"decode ({DEFAULT_STEPS} steps)"), *routing, *vision]
    scaling = bundle.config.rope_scaling
    if scaling is not None and scaling.original_max_seq_len is not None:  # past the original context
        assert default_prompt_len(bundle.config) + DEFAULT_STEPS > scaling.original_max_seq_len


def test_one_graph_for_any_batch_and_past(exported):
    """Batch 3 and 1, a 1-token prompt (sizes the trace never saw), past 0 then 1 then 2."""
    bundle, _ = exported
    c = bundle.config
    session = open_chain(bundle)  # a vision tower's three graphs: text-only batches here
    for batch in (3, 1):
        tokens = np.arange(3 * batch).reshape(batch, 3) % c.vocab_size
        full = session.prefill_and_decode(tokens, 3)
        stepped = session.prefill_and_decode(tokens, 1)
        np.testing.assert_allclose(stepped, full, atol=1e-4, rtol=1e-4)
        _, present = session.step(tokens[:, :1], np.ones((batch, 1), np.int64), session.empty_past(batch))
        assert present[0].shape == (batch, c.n_kv_heads, 1, c.head_dim)
