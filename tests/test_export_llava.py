"""ONNX export of LLaVA (issue 14 item 5): three graphs, chained in onnxruntime.

tiny("llava-1.5-7b") is exported once for this module (vision.onnx, embed.onnx, model.onnx
taking inputs_embeds: export/vision_graphs.py).  The checks:

- the bundle lists the three graphs (format version 4), each with the interface the config
  implies, the tower's weights in vision.onnx only, the embedding table alone in embed.onnx;
- `lmref validate-onnx` passes: the chain on rows with images against the golden and the
  torch twin, the vision graph alone against the golden tower and projector, every weight;
- the chain equals the golden on two images in a batch with a row between them that has
  none, and fails it with the two images swapped (the merge's order is checked);
- decode through the graph's cache after an image prefill equals the golden's decode;
- bad images (size, channels), a number of placeholders the images do not fill, placeholders
  without images or past the prompt are refused with the golden's own message, before
  onnxruntime runs (and before `--impl onnx` exports anything);
- greedy generation from the three graphs follows the golden's argmax;
- `--impl onnx` passes forward, loss and capture (vision.features, projector) of a golden
  image case with one export;
- a bundle whose manifest lists the wrong graphs is refused, and the text-only wrappers
  refuse a config with a vision tower.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from lmref import impl_numpy  # noqa: E402
from lmref.cli import main  # noqa: E402
from lmref.conformance.image_cases import case_pixels, place_images, text_ids  # noqa: E402
from lmref.conformance.metrics import compare, gate  # noqa: E402
from lmref.conformance.runner import PASS, run_check  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.conformance.tolerances import Tolerances  # noqa: E402
from lmref.export.bundle import open_bundle  # noqa: E402
from lmref.export.decoder import OnnxDecoder  # noqa: E402
from lmref.export.errors import BundleError  # noqa: E402
from lmref.export.exporter import FORMAT_VERSION, export_onnx  # noqa: E402
from lmref.export.generate import generate  # noqa: E402
from lmref.export.multimodal import MultimodalSession, open_chain  # noqa: E402
from lmref.export.onnx_adapter import OnnxAdapter  # noqa: E402
from lmref.export.runtime import DecoderSession, open_session  # noqa: E402
from lmref.impl_torch import Transformer  # noqa: E402
from lmref.spec import InputError, init_params, tiny  # noqa: E402
from lmref.spec.params import uniform01  # noqa: E402

ARCH = "llava-1.5-7b"
CONFIG = tiny(ARCH)
V = CONFIG.vision
T = V.tokens_per_image
TOL = Tolerances().row("float32")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(bundle, params, chain) of tiny(ARCH), exported once for this module."""
    params = init_params(CONFIG, 5)
    out = tmp_path_factory.mktemp("llava")
    export_onnx(CONFIG, params, out, source={"kind": "preset", "preset": ARCH, "seed": 5})
    bundle = open_bundle(out)
    return bundle, params, open_chain(bundle)


def tokens_with_images(batch: int, seq: int, images: tuple[tuple[int, int], ...], seed: int) -> np.ndarray:
    """[batch, seq] text tokens (never the placeholder) with a run of T placeholders at each (row, start)."""
    text = text_ids(CONFIG, uniform01(seed, "test_export_llava", batch * seq).reshape(batch, seq))
    return place_images(CONFIG, text, images)


def pixels(n: int, seed: int) -> np.ndarray:
    return case_pixels(ARCH, f"test-{seed}", seed, CONFIG, n)


def gates(out: np.ndarray, ref: np.ndarray) -> list[str]:
    return gate(compare(out, ref, TOL), TOL)


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_the_bundle_holds_three_graphs(exported):
    bundle, params, chain = exported
    assert isinstance(chain, MultimodalSession)
    assert bundle.manifest["format_version"] == FORMAT_VERSION == 4
    assert bundle.manifest["graphs"] == {"vision": "vision.onnx", "embed": "embed.onnx", "decoder": "model.onnx"}
    assert {"vision.onnx", "embed.onnx", "model.onnx"} <= set(bundle.manifest["files"])
    graphs = {role: onnx.load(str(bundle.graph_path(role))) for role in bundle.manifest["graphs"]}
    io = {role: ({v.name: _dims(v) for v in g.graph.input}, {v.name: _dims(v) for v in g.graph.output})
          for role, g in graphs.items()}
    assert io["vision"] == ({"pixel_values": ["n_images", 3, V.image_size, V.image_size]},
                            {"image_features": ["n_images", T, CONFIG.d_model],
                             "vision_features": ["n_images", T, V.d_model]})
    assert io["embed"] == ({"input_ids": ["batch", "sequence"]},
                           {"inputs_embeds": ["batch", "sequence", CONFIG.d_model]})
    assert list(io["decoder"][0])[0] == "inputs_embeds"
    assert io["decoder"][0]["inputs_embeds"] == ["batch", "sequence", CONFIG.d_model]
    # the tower's weights live in vision.onnx only; embed.onnx holds the token table and nothing else
    names = {role: [t.name for t in g.graph.initializer] for role, g in graphs.items()}
    assert not [n for n in names["decoder"] + names["embed"] if ".vision." in n or ".projector." in n]
    assert any(".vision.layers." in n for n in names["vision"])
    (table,) = graphs["embed"].graph.initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(table), params["embed.tokens"].astype(np.float32))


def test_lmref_validate_onnx_passes_with_images(exported, capsys):
    bundle, _, _ = exported
    assert main(["validate-onnx", str(bundle.root), "--provider", "cpu"]) == 0
    out = capsys.readouterr().out
    for phase in ("prefill vs golden", "decode (8 steps) vs golden", "prefill vs torch", "decode (8 steps) vs torch",
                  "image_features (vision.onnx alone) vs golden", "vision_features (vision.onnx alone) vs golden"):
        assert f"PASS {phase}" in out, out
    assert "images: one per row" in out and "PASS weights" in out and "validate-onnx: PASS (6 of 6 checks" in out


def test_a_prompt_too_short_for_its_image_is_refused_with_the_length_it_needs(exported, capsys):
    bundle, _, _ = exported
    assert main(["validate-onnx", str(bundle.root), "--prompt-len", "1", "--pad", "0", "--steps", "1"]) == 2
    tokens = bundle.config.vision.tokens_per_image
    assert capsys.readouterr().err == (
        f"lmref validate-onnx: error: a prompt of 1 token(s) cannot hold a text token, an image of {tokens} tokens "
        f"and a text token: each row needs {tokens + 2} or more (--prompt-len, less --pad for the padded row)\n")


def test_the_chain_equals_the_golden_on_two_images_around_a_row_without(exported):
    """Row 0 an image at 2, row 1 text only, row 2 an image at 1: the images fill the
    placeholders in row-major order, across the row without one."""
    _, params, chain = exported
    tokens = tokens_with_images(3, T + 6, ((0, 2), (2, 1)), seed=1)
    images = pixels(2, seed=1)
    mask = np.ones(tokens.shape, np.int64)
    logits = chain.outputs(tokens, mask, chain.empty_past(3), pixel_values=images)["logits"]
    golden = impl_numpy.forward(CONFIG, params, tokens, pixel_values=images)
    assert gates(logits, golden) == []
    swapped = chain.outputs(tokens, mask, chain.empty_past(3), pixel_values=images[::-1])["logits"]
    assert gates(swapped, golden) != []  # the merge's order shows in the logits
    np.testing.assert_array_equal(swapped[1], logits[1])  # the row without an image is untouched


def test_decode_through_the_cache_after_an_image_prefill(exported):
    _, params, chain = exported
    tokens = tokens_with_images(2, T + 8, ((0, 1), (1, 2)), seed=2)
    images, prompt_len = pixels(2, seed=2), T + 3
    stepped = chain.prefill_and_decode_outputs(tokens, prompt_len, pixel_values=images)["logits"]
    golden = impl_numpy.decode(CONFIG, params, tokens, prompt_len, pixel_values=images)
    assert gates(stepped[:, prompt_len:], golden[:, prompt_len:]) == []
    assert gates(stepped, golden) == []
    full = chain.prefill_and_decode_outputs(tokens, tokens.shape[1], pixel_values=images)["logits"]
    np.testing.assert_allclose(stepped, full, atol=1e-4, rtol=1e-4)


def _bad_inputs() -> dict:
    """label -> (tokens, pixel_values, prompt_len or None)."""
    tokens = tokens_with_images(2, T + 6, ((0, 1),), seed=3)
    one = pixels(1, seed=3)
    short = tokens.copy()
    short[0, 1] = 7  # T - 1 placeholders for one image
    late = tokens_with_images(1, T + 6, ((0, 4),), seed=3)
    return {
        "image of the wrong size": (tokens, one[:, :, :-1, :-1], None),
        "image of the wrong channel count": (tokens, one[:, :1], None),
        "placeholders the image does not fill": (short, one, None),
        "placeholders without images": (tokens, None, None),
        "two images for one run of placeholders": (tokens, pixels(2, seed=4), None),
        "placeholders past the prompt": (late, one, 4 + T - 1),
    }


@pytest.mark.parametrize("label", list(_bad_inputs()))
def test_bad_images_are_refused_with_the_golden_message(exported, label):
    _, params, chain = exported
    tokens, images, prompt_len = _bad_inputs()[label]
    with pytest.raises(InputError) as golden:
        if prompt_len is None:
            impl_numpy.forward(CONFIG, params, tokens, pixel_values=images)
        else:
            impl_numpy.decode(CONFIG, params, tokens, prompt_len, pixel_values=images)
    adapter = OnnxAdapter()
    calls = [lambda: chain.prefill_and_decode_outputs(tokens, prompt_len or tokens.shape[1], pixel_values=images),
             lambda: adapter.decode(CONFIG, params, tokens, prompt_len or tokens.shape[1], pixel_values=images)]
    if prompt_len is None:
        calls += [lambda: chain.outputs(tokens, np.ones(tokens.shape, np.int64), chain.empty_past(len(tokens)),
                                        pixel_values=images),
                  lambda: adapter.forward(CONFIG, params, tokens, pixel_values=images),
                  lambda: adapter.loss(CONFIG, params, tokens, pixel_values=images)]
    for call in calls:
        with pytest.raises(InputError) as ours:
            call()
        assert str(ours.value) == str(golden.value)
    assert adapter.exports == 0  # refused before anything was exported


def test_greedy_generation_from_the_three_graphs_follows_the_golden(exported):
    _, params, chain = exported
    prompt = [int(t) for t in tokens_with_images(1, T + 4, ((0, 1),), seed=5)[0]]
    image = pixels(1, seed=5)
    out = generate(chain, prompt, 6, pixel_values=image, temperature=0)
    for i, token in enumerate(out):
        logits = impl_numpy.forward(CONFIG, params, np.array([prompt + out[:i]]), pixel_values=image)
        assert token == int(logits[0, -1].argmax()), f"step {i}"
    with pytest.raises(InputError, match="tokens hold 0 image tokens .* but 1 images"):
        generate(chain, [1, 2, 3], 2, pixel_values=image, temperature=0)


def test_the_adapter_passes_an_image_case_with_one_export():
    adapter, case = OnnxAdapter(), GoldenStore().load(ARCH, f"prefill-image-b2-s{T + 7}")
    results = {cap: run_check(case, adapter, cap) for cap in ("forward", "loss", "capture")}
    assert {cap: r.status for cap, r in results.items()} == dict.fromkeys(results, PASS), \
        "\n".join(r.message for r in results.values())
    assert results["capture"].metrics["components_compared"] == 3  # vision.features, projector, logits
    assert adapter.exports == 1
    text = case.tokens.copy()
    text[text == V.image_token_id] = 3
    with pytest.raises(NotImplementedError, match="no outputs for intermediates"):
        adapter.capture(case.config, case.params(), text)


def test_a_bundle_listing_other_graphs_is_refused(exported, tmp_path):
    bundle, _, _ = exported
    copy = shutil.copytree(bundle.root, tmp_path / "copy")
    manifest = json.loads((copy / "export.json").read_text())
    (copy / "export.json").write_text(json.dumps(manifest | {"format_version": 3}))
    with pytest.raises(BundleError, match=r"lists the graphs \['decoder'\], the config .* exports "
                                          r"\['vision', 'embed', 'decoder'\]"):
        open_bundle(copy)
    swapped = manifest["graphs"] | {"vision": "embed.onnx", "embed": "vision.onnx"}
    (copy / "export.json").write_text(json.dumps(manifest | {"graphs": swapped}))
    with pytest.raises(BundleError, match="the graph is the 'embed' graph, export.json lists it as 'vision'"):
        open_bundle(copy)


def test_the_text_wrappers_refuse_a_vision_tower(exported):
    bundle, params, _ = exported
    with pytest.raises(ValueError, match="has a vision tower: its decoder graph is OnnxEmbedsDecoder"):
        OnnxDecoder(Transformer.from_canonical(CONFIG, params))
    with pytest.raises(ValueError, match="MultimodalSession"):
        DecoderSession(open_session(bundle.model_path), CONFIG)
