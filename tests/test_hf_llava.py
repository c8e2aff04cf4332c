"""LLaVA 1.5 and transformers' `llava` type (convert/models/llava.py; needs torch and transformers).

Round trips both ways are exact; the Hub's layout is what lmref writes and what transformers
5.23 re-saves, and transformers' other spellings read as the same weights; transformers in true
float64 (tests/test_hf_float64.py `Float64Mode`) computes the golden's logits on images
(one per row, two in one row, one row without), decoding through its KV cache after an image
prefill too; `--impl hf` passes every llava case and names a broken tower layer; config.json
fields are read (transformers' defaults included) and refused with the field named.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from lmref import impl_numpy  # noqa: E402
from lmref.cli import main  # noqa: E402
from lmref.conformance.image_cases import place_images  # noqa: E402
from lmref.conformance.metrics import compare, gate  # noqa: E402
from lmref.conformance.runner import FAIL, PASS, run_check  # noqa: E402
from lmref.conformance.store import GoldenStore  # noqa: E402
from lmref.conformance.tolerances import DEFAULT_ROWS  # noqa: E402
from lmref.convert import config_from_hf, from_hf, load_checkpoint, to_hf  # noqa: E402
from lmref.convert.errors import ConversionError  # noqa: E402
from lmref.convert.hf_adapter import HFAdapter, model_inputs  # noqa: E402
from lmref.convert.models import llava  # noqa: E402
from lmref.spec import init_params, tiny  # noqa: E402
from lmref.spec.errors import InputError  # noqa: E402
from lmref.spec.vision import vision_capture_names  # noqa: E402

from tests.controls import run_arch  # noqa: E402
from tests.hf_configs import CONFIGS  # noqa: E402
from tests.test_hf_float64 import Float64Mode, transformers_float64  # noqa: E402
from tests.test_hf_transformers import _randomise  # noqa: E402

F32, F64 = DEFAULT_ROWS["float32"], DEFAULT_ROWS["float64"]
LLAVA = {key: config for key, config in CONFIGS.items() if config.vision is not None}
# (row, start) of each image's run of t placeholders: one per row; two in row 0, two text tokens
# apart; row 1 without one
IMAGES = {"one-per-row": lambda t: ((0, 1), (1, 4)), "two-in-row-0": lambda t: ((0, 0), (0, t + 2)),
          "row-0-only": lambda t: ((0, 3),)}


def images_and_tokens(config, layout: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values [N, C, H, W], tokens [2, 2t + 6] with the placeholders of IMAGES[layout])."""
    v = config.vision
    spots = IMAGES[layout](v.tokens_per_image)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, size=(2, 2 * v.tokens_per_image + 6))
    tokens[tokens == v.image_token_id] = 0
    pixels = rng.uniform(-1.7, 1.7, (len(spots), v.n_channels, v.image_size, v.image_size))
    return pixels, place_images(config, tokens, spots)


def same_tensors(got: dict, want: dict) -> bool:
    return sorted(got) == sorted(want) and all(
        got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want)


# --- round trips and layouts -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("key", sorted(LLAVA))
def test_lmref_to_hf_to_lmref_is_exact_in_the_hub_layout(key, dtype, tmp_path):
    config = LLAVA[key]
    params = {k: v.astype(dtype) for k, v in init_params(config, 5).items()}
    to_hf(config, params, tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert {k.split(".")[0] for k in keys} == {"language_model", "vision_tower", "multi_modal_projector"}
    assert ("language_model.lm_head.weight" in keys) != config.tie_embeddings
    assert all(k.startswith("vision_tower.vision_model.") for k in keys if k.startswith("vision_tower"))
    v = config.vision
    patch = load_file(tmp_path / "model.safetensors")["vision_tower.vision_model.embeddings.patch_embedding.weight"]
    assert patch.shape == (v.d_model, v.n_channels, v.patch_size, v.patch_size)
    back_config, back_params = from_hf(tmp_path)
    assert back_config == config
    assert list(back_params) == list(params) and same_tensors(back_params, params)


def test_the_patch_convolution_is_the_canonical_matmul_transposed_and_unflattened(tmp_path):
    """Row c*p*p + i*p + j of vision.patch_embed is channel c, pixel row i, column j (spec/vision.py)."""
    config = LLAVA["llava-1.5-7b"]
    params = init_params(config, 1)
    to_hf(config, params, tmp_path)
    conv = load_file(tmp_path / "model.safetensors")["vision_tower.vision_model.embeddings.patch_embedding.weight"]
    p = config.vision.patch_size
    c, i, j = 2, 1, 3
    assert np.array_equal(conv[:, c, i, j], params["vision.patch_embed"][c * p * p + i * p + j])


@pytest.fixture(scope="module")
def transformers_llava(tmp_path_factory):
    """A LlavaForConditionalGeneration of transformers' own init, saved by save_pretrained."""
    config = tiny("llava-1.5-7b")
    directory = tmp_path_factory.mktemp("llava-init")
    to_hf(config, init_params(config, 2), directory / "seed")
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(transformers.AutoConfig.from_pretrained(directory / "seed"))
    _randomise(model, seed=3)
    model.eval().save_pretrained(directory / "saved")
    return model, directory / "saved"


def test_hf_to_lmref_to_hf_is_exact_and_transformers_resaves_it_unchanged(transformers_llava, tmp_path):
    """A fresh model's save (5.23: `vision_tower.*`) reads as the same weights; lmref writes them in
    the Hub's layout, which transformers loads and saves again key for key and bit for bit."""
    model, saved = transformers_llava
    config, params = from_hf(saved)
    to_hf(config, params, tmp_path / "ours")
    original, ours = load_file(saved / "model.safetensors"), load_file(tmp_path / "ours" / "model.safetensors")
    assert same_tensors(ours, {k.replace("vision_tower.", llava.VISION_PREFIX): v for k, v in original.items()})
    reloaded, info = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "ours",
                                                                                output_loading_info=True)
    assert not any(info.values())
    reloaded.save_pretrained(tmp_path / "resaved")
    assert same_tensors(load_file(tmp_path / "resaved" / "model.safetensors"), ours)
    to_hf(*from_hf(tmp_path / "resaved"), tmp_path / "again")
    assert same_tensors(load_file(tmp_path / "again" / "model.safetensors"), ours)


def test_transformers_in_memory_names_read_as_the_same_weights(transformers_llava, tmp_path):
    model, saved = transformers_llava
    _, params = from_hf(saved)
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    save_file({k: v.numpy() for k, v in model.state_dict().items()}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    assert "model.language_model.embed_tokens.weight" in load_file(tmp_path / "model.safetensors")
    assert same_tensors(from_hf(tmp_path)[1], params)


def test_clips_stored_position_ids_buffer_is_dropped(tmp_path):
    """CLIP files saved before transformers 4.31 hold the `embeddings.position_ids` buffer."""
    config = LLAVA["llava-1.5-7b"]
    params = init_params(config, 1)
    to_hf(config, params, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    ids = np.arange(config.vision.n_patches + 1, dtype=np.int64)[None]
    save_file(tensors | {f"{llava.VISION_PREFIX}embeddings.position_ids": ids}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    assert same_tensors(from_hf(tmp_path)[1], params)


def test_two_spellings_of_one_tensor_are_refused(tmp_path):
    config = LLAVA["llava-1.5-7b"]
    to_hf(config, init_params(config, 1), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file(tensors | {"lm_head.weight": tensors["language_model.lm_head.weight"]},
              str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="'language_model.lm_head.weight' and 'lm_head.weight' are both"):
        from_hf(tmp_path)


# --- transformers' numbers ---------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(IMAGES))
@pytest.mark.parametrize("key", sorted(LLAVA))
def test_transformers_float64_computes_the_goldens_logits_on_images(key, layout, tmp_path):
    config = LLAVA[key]
    params = init_params(config, 11)
    to_hf(config, params, tmp_path)
    pixels, tokens = images_and_tokens(config, layout)
    golden = impl_numpy.forward(config, params, tokens, pixel_values=pixels)
    got = transformers_float64(tmp_path, tokens, pixel_values=torch.from_numpy(pixels)).logits.numpy()
    assert gate(compare(got, golden, F64), F64) == [], (key, layout)


def transformers_float64_decode(directory, tokens: np.ndarray, prompt_len: int, pixels: np.ndarray) -> np.ndarray:
    """Logits [B, S, V] of transformers' float64 model: a prefill of the prompt and the images,
    then one token per call through its KV cache (`past_key_values`), all under Float64Mode."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with Float64Mode(), torch.no_grad():
            model = transformers.AutoModelForImageTextToText.from_pretrained(
                directory, attn_implementation="eager", dtype=torch.float64).eval()
            ids = torch.from_numpy(tokens)
            out = model(input_ids=ids[:, :prompt_len], pixel_values=torch.from_numpy(pixels), use_cache=True)
            steps = [out.logits]
            for t in range(prompt_len, ids.shape[1]):
                out = model(input_ids=ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
                steps.append(out.logits)
            return torch.cat(steps, dim=1).numpy()
    finally:
        torch.set_default_dtype(previous)


def test_transformers_float64_decodes_after_an_image_prefill_as_the_golden(tmp_path):
    config = LLAVA["llava-1.5-7b"]
    params = init_params(config, 11)
    to_hf(config, params, tmp_path)
    pixels, tokens = images_and_tokens(config, "one-per-row")  # 24 tokens
    prompt = config.vision.tokens_per_image + 5  # both images in the prompt, then 10 single-token steps
    golden = impl_numpy.decode(config, params, tokens, prompt, pixel_values=pixels)
    got = transformers_float64_decode(tmp_path, tokens, prompt, pixels)
    assert gate(compare(got, golden, F64), F64) == []


# --- --impl hf ---------------------------------------------------------------------------------


class BrokenTowerLayer1(HFAdapter):
    """transformers with the tower's layer 1 attention output projection scaled by 1.2."""

    name = "hf-broken-tower"

    def build_model(self, config, params):
        model = super().build_model(config, params)
        with torch.no_grad():
            model.get_submodule("model.vision_tower.encoder.layers.1.self_attn.out_proj").weight.mul_(1.2)
        return model


@pytest.fixture(scope="module")
def store():
    return GoldenStore()


@pytest.mark.parametrize("arch", ["llava-1.5-7b", "llava-1.5-13b"])
def test_every_check_of_llava_passes_with_every_capture(store, arch):
    results = run_arch(HFAdapter(), arch, store)
    assert [(case, cap, r.status) for case, cap, r in results if r.status != PASS] == []
    image_captures = [r for case, cap, r in results if cap == "capture" and "image" in case]
    assert image_captures and all(r.metrics["missing"] == [] for r in image_captures)
    vision = vision_capture_names(store.load(arch, "prefill-image-b2-s16").config)
    assert all(set(vision) <= set(r.metrics["nmse"]) for r in image_captures)


def test_a_broken_tower_layer_is_named(store):
    case = store.load("llava-1.5-7b", "prefill-image-b2-s16")
    result = run_check(case, BrokenTowerLayer1(), "capture")
    assert result.status == FAIL and result.metrics["first"] == "vision.layers.1.attn"
    assert all(result.metrics["nmse"][name] < 1e-10 for name in ("vision.embed", "vision.layers.0.out"))


def test_the_loss_leaves_the_placeholders_out_as_the_golden_does(store):
    """labels are -100 at the placeholders: the loss with plain labels is another number."""
    case = store.load("llava-1.5-7b", "prefill-image-b2-s16")
    config, params = case.config, case.params()
    adapter = HFAdapter()
    golden = impl_numpy.loss(config, params, case.tokens, pixel_values=case.pixel_values)
    got = float(adapter.loss(config, params, case.tokens, pixel_values=case.pixel_values))
    assert abs(got - golden) <= F32.loss_atol + F32.loss_rtol * abs(golden)
    inputs = model_inputs(config, case.tokens, case.pixel_values)
    with torch.no_grad():
        plain = float(adapter.build_model(config, params)(**inputs, labels=inputs["input_ids"]).loss)
    assert abs(plain - golden) > 100 * (F32.loss_atol + F32.loss_rtol * abs(golden))


@pytest.mark.parametrize("change, message", [
    (lambda px, tok: (px[:, :, :-1, :-1], tok), "pixel_values must have shape"),
    (lambda px, tok: (px[:1], tok), "but 1 images of a 3x3 patch grid fill 9"),
    (lambda px, tok: (None, tok), "but no pixel_values were given"),
])
def test_bad_images_are_refused_with_the_goldens_message(store, change, message):
    case = store.load("llava-1.5-7b", "prefill-image-b2-s16")
    pixels, tokens = change(case.pixel_values, case.tokens)
    with pytest.raises(InputError, match=message):
        impl_numpy.forward(case.config, case.params(), tokens, pixel_values=pixels)
    with pytest.raises(InputError, match=message):
        HFAdapter().forward(case.config, case.params(), tokens, pixel_values=pixels)


# --- config.json -------------------------------------------------------------------------------

HUB = json.loads((Path(__file__).parent / "hf_real_configs" / "llava-hf--llava-1.5-7b-hf.json").read_text())


def test_the_hub_file_reads_every_image_field():
    v = config_from_hf(HUB, "hub").vision
    assert (v.image_size, v.patch_size, v.d_model, v.n_layers, v.n_heads, v.d_ff) == (336, 14, 1024, 24, 16, 4096)
    assert (v.activation, v.norm_eps, v.feature_layer, v.feature_strategy) == ("quick_gelu", 1e-5, -2, "drop_class")
    assert (v.projector_activation, v.projector_bias, v.image_token_id) == ("gelu", True, 32000)
    assert v.tokens_per_image == 576


@pytest.mark.parametrize("vision_config", [None, {"model_type": "clip_vision_model"}])
def test_left_out_fields_are_transformers_defaults(vision_config):
    """An absent vision_config is LlavaConfig's ViT-L/14-336; a dict takes CLIPVisionConfig's
    class defaults (ViT-B/32 at 224) for what it leaves out."""
    text = {"vocab_size": 32064}  # LlavaConfig's default image token 32000 must be a token
    data = {"model_type": "llava", "text_config": text,
            **({} if vision_config is None else {"vision_config": vision_config})}
    full = transformers.AutoConfig.for_model("llava", text_config=text, vision_config=vision_config).to_dict()
    assert config_from_hf(data, "x") == config_from_hf(full, "x")
    assert config_from_hf(data, "x").vision.d_model == (1024 if vision_config is None else 768)


def test_transformers_defaults_alone_put_the_image_token_outside_the_vocabulary():
    with pytest.raises(ConversionError, match=r"vision.image_token_id: must be below vocab_size \(32000\)"):
        config_from_hf({"model_type": "llava"}, "x")


def test_image_token_id_is_image_token_index():
    hub = {k: v for k, v in HUB.items() if k != "image_token_index"}
    assert config_from_hf(hub | {"image_token_id": 7}, "x").vision.image_token_id == 7
    with pytest.raises(ConversionError, match="image_token_index=32000 is not supported: the same field as "
                                              "image_token_id=7"):
        config_from_hf(HUB | {"image_token_id": 7}, "x")


@pytest.mark.parametrize("change, message", [
    ({"vision_feature_layer": [-2, -5]}, r"vision_feature_layer=\[-2, -5\] is not supported: a list of layers"),
    ({"vision_feature_layer": 30}, "vision.feature_layer"),
    ({"vision_feature_select_strategy": "cls_patch"}, "vision_feature_select_strategy='cls_patch' is not supported"),
    ({"projector_hidden_act": "gelu_fast"}, "projector_hidden_act='gelu_fast' is not supported"),
    ({"vocab_size": 32000}, "vocab_size=32000 is not supported: the decoder's is text_config.vocab_size=32064"),
    ({"text_config": HUB["text_config"] | {"model_type": "mistral"}},
     "text_config.model_type='mistral' is not supported: lmref reads llava's decoder as llama only"),
    ({"vision_config": HUB["vision_config"] | {"model_type": "siglip_vision_model"}},
     "vision_config.model_type='siglip_vision_model' is not supported"),
    ({"vision_config": HUB["vision_config"] | {"hidden_act": "gelu_fast"}}, "vision_config.hidden_act='gelu_fast'"),
    ({"vision_config": HUB["vision_config"] | {"frobnicate": 1}}, "unknown field.s. vision_config.frobnicate"),
    ({"text_config": HUB["text_config"] | {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}},
     "text_config.rope_scaling"),
])
def test_what_lmref_cannot_represent_is_refused_by_name(change, message):
    with pytest.raises(ConversionError, match=message):
        config_from_hf(HUB | change, "x")


def test_a_config_llava_cannot_express_is_refused_by_name():
    base = tiny("llava-1.5-7b")
    with pytest.raises(ConversionError, match="its text_config: .*attn_out_bias"):
        to_hf(dataclasses.replace(base, qkv_bias=True), init_params(base, 0), "unused")
    truncated = dataclasses.replace(base, vision=dataclasses.replace(base.vision, activation="gelu_tanh_truncated"))
    with pytest.raises(ConversionError, match="vision.activation='gelu_tanh_truncated' has no transformers name"):
        to_hf(truncated, init_params(truncated, 0), "unused")
    with pytest.raises(ConversionError, match="it has no vision tower"):
        to_hf(dataclasses.replace(base, vision=None), init_params(dataclasses.replace(base, vision=None), 0), "x")


def test_lmref_convert_both_ways(tmp_path, capsys):
    ckpt, hf, back = tmp_path / "ckpt", tmp_path / "hf", tmp_path / "back"
    assert main(["convert", "--preset", "llava-1.5-7b", "--seed", "3", "--out", str(ckpt)]) == 0
    assert main(["convert", "--to-hf", str(ckpt), "--out", str(hf)]) == 0
    assert "wrote Hugging Face model (llava)" in capsys.readouterr().out
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["LlavaForConditionalGeneration"]
    assert main(["convert", "--from-hf", str(hf), "--out", str(back)]) == 0
    (config, params), (back_config, back_params) = load_checkpoint(ckpt), load_checkpoint(back)
    assert back_config == config == tiny("llava-1.5-7b") and same_tensors(back_params, params)
