"""Vision runs (train/multimodal.py): LLaVA's two stages on the embedded shapes set, the
text-only baseline they must beat, `lmref generate --image`, `lmref shapes`, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

for _module in ("torch", "matplotlib", "tqdm", "PIL"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

import torch
from PIL import Image

from lmref.convert.checkpoint import load_checkpoint
from lmref.convert.errors import CheckpointError
from lmref.spec.params import init_params
from lmref.train.captions import CAPTION_END, encode, sequence_length
from lmref.train.generate import generate, image_prompt, load_generator
from lmref.train.images import read_image
from lmref.train.multimodal import vision_config
from lmref.train.shapes import caption, examples, scene
from lmref.train.tokenizer import ImageByteTokenizer, load_tokenizer
from tests.train_helpers import lmref, one_thread, records, shared_run

ARCH = ["--arch", "llava-1.5-7b", "--no-progress"]
# A run whose image model ends clearly below its baseline (seed 0: 0.100 against 0.127 nats per
# byte; seeds 1 and 2 gave 0.099 / 0.131 and 0.088 / 0.132), in about 20 s on one thread.
LEARNS = [*ARCH, "--image-size", "16", "--vision-d-model", "32", "--d-model", "48", "--n-heads", "3", "--n-layers",
          "1", "--text-steps", "60", "--projector-steps", "20", "--steps", "150", "--batch-size", "32",
          "--eval-every", "1000", "--eval-batches", "2", "--seed", "0"]
# Two steps per stage, no text pretraining: the checkpoints of stage 1 and stage 2 against the init.
STAGED = [*ARCH, "--image-size", "12", "--vision-d-model", "32", "--text-steps", "0", "--projector-steps", "2",
          "--steps", "2", "--batch-size", "4", "--eval-batches", "1", "--seed", "3"]


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp("llava") / "run"
    assert lmref("train", *LEARNS, "--out", out) == 0
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two scenes of seed 5 as 16-pixel PNGs (the learned run's size), via `lmref shapes`."""
    out = tmp_path_factory.mktemp("scenes") / "png"
    assert lmref("shapes", "--out", out, "--count", "2", "--seed", "5", "--image-size", "16") == 0
    return out


def tower(image_size: int):
    """A vision run's default tower at `image_size` pixels."""
    return vision_config("llava-1.5-7b", {}, {"image_size": image_size}, ImageByteTokenizer()).vision


def _changed(before: dict, after: dict) -> set[str]:
    return {name for name in before if not np.array_equal(before[name], after[name])}


def test_stage_one_trains_the_projector_alone_and_stage_two_everything_the_loss_reaches(tmp_path):
    out = tmp_path / "run"
    assert lmref("train", *STAGED, "--out", out) == 0
    config, stage1 = load_checkpoint(out / "step-000002")
    _, stage2 = load_checkpoint(out / "step-000004")
    init = {k: v.astype(np.float32) for k, v in init_params(config, 3).items()}
    assert _changed(init, stage1) == {n for n in init if n.startswith("projector.")}
    # the feature layer -2 of 3 layers: layer 2 and the post-LayerNorm reach no output (spec/vision.py)
    unreached = {n for n in init if n.startswith(("vision.layers.2.", "vision.post_norm."))}
    assert unreached and _changed(stage1, stage2) == set(init) - unreached
    states = [json.loads((out / f"step-00000{s}" / "trainer_state.json").read_text()) for s in (2, 4)]
    assert [s["stage"] for s in states] == ["projector", "full"]
    assert states[1]["tokenizer"] == {"kind": "byte", "vocab_size": 257, "image_token_id": 256}
    assert config.vocab_size == 257 and config.vision.image_token_id == 256


def test_the_image_model_ends_clearly_below_the_text_only_baseline(learned):
    summary = records(learned, "summary")[-1]
    assert summary["val_loss"] < 0.9 * summary["baseline_val_loss"], summary
    state = json.loads((learned / "step-000230" / "trainer_state.json").read_text())
    assert (state["val_loss"], state["baseline_val_loss"]) == (summary["val_loss"], summary["baseline_val_loss"])
    # the same number of steps over the same scenes: both start where the text pretraining stopped
    steps = {m: [(r["step"], r["samples"]) for r in records(learned, "train") if r["model"] == m and r["step"] > 60]
             for m in ("text", "image")}
    assert steps["text"] == steps["image"] and len(steps["text"]) == 20 + 150
    assert {r["stage"] for r in records(learned, "train")} == {"pretrain", "baseline", "projector", "full"}
    assert (learned / "loss.png").stat().st_size > 0


def test_generate_describes_an_image(learned, scenes, capsys):
    image = scenes / "scene-000000.png"
    capsys.readouterr()
    assert lmref("generate", "--checkpoint", learned, "--image", image, "--greedy") == 0
    described = capsys.readouterr().out
    assert described.strip() and described.count("\n") == 1  # one caption, ended at its end of line
    assert lmref("generate", "--checkpoint", learned, "--image", image, "--prompt", "two shapes:", "--greedy") == 0
    assert capsys.readouterr().out.startswith("two shapes:")


def test_greedy_with_an_image_is_the_argmax_of_the_full_forward(learned, scenes):
    model, tokenizer, _ = load_generator(learned, "cpu")
    pixels = read_image(scenes / "scene-000001.png", model.config.vision)
    prompt = image_prompt(model, tokenizer, "")
    with one_thread():
        out = generate(model, prompt, 60, temperature=0, pixel_values=pixels)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out]), pixel_values=pixels)[0]  # [S, vocab], no cache
    assert logits[len(prompt) - 1 : -1].argmax(dim=-1).tolist() == out


@pytest.mark.parametrize(("size", "mode", "expected"), [
    (20, "RGB", "the image is 20x20 pixels; the model takes 16x16"),
    (16, "RGBA", "the image has 4 channel(s) (mode RGBA"),
    (16, "L", "the image has 1 channel(s) (mode L"),
])
def test_an_image_of_the_wrong_size_or_channels_is_refused(learned, tmp_path, capsys, size, mode, expected):
    path = tmp_path / "bad.png"
    Image.new(mode, (size, size)).save(path)
    assert lmref("generate", "--checkpoint", learned, "--image", path) == 2
    assert expected in capsys.readouterr().err


def test_an_image_of_the_wrong_size_is_refused_before_it_is_decoded(learned, tmp_path, capsys, monkeypatch):
    """A large file is refused on its header's size (decoding a 10000x10000 PNG took 700 MB), and
    one past Pillow's decompression-bomb limit by name, not with a traceback (limit lowered here)."""
    from PIL import ImageFile

    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)

    def no_decoding(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert lmref("generate", "--checkpoint", learned, "--image", path) == 2
    assert "the image is 40x40 pixels; the model takes 16x16" in capsys.readouterr().err
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert lmref("generate", "--checkpoint", learned, "--image", path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmref generate: error: --image {path}: Image size (1600 pixels) exceeds limit") and (
        err.endswith("; the model takes 16x16\n"))


def test_an_image_for_a_text_only_checkpoint_is_refused(tmp_path_factory, scenes, capsys):
    text_run = shared_run(tmp_path_factory)
    assert lmref("generate", "--checkpoint", text_run, "--image", scenes / "scene-000000.png") == 2
    assert "is a text-only model" in capsys.readouterr().err


def test_the_exported_graphs_describe_an_image_as_the_checkpoint_does(learned, scenes, tmp_path, capsys):
    """The checkpoint's three ONNX graphs (export/multimodal.py) in onnxruntime, greedy: the same caption."""
    pytest.importorskip("onnxruntime")
    assert lmref("export", "--checkpoint", learned, "--out", tmp_path / "onnx") == 0
    assert capsys.readouterr().out.startswith(f"wrote embed.onnx, model.onnx, vision.onnx to {tmp_path / 'onnx'} (")
    captions = []
    for source in (("--checkpoint", learned), ("--onnx", tmp_path / "onnx")):
        capsys.readouterr()
        assert lmref("generate", *source, "--image", scenes / "scene-000001.png", "--greedy") == 0
        captions.append(capsys.readouterr().out)
    assert captions[0].strip() and captions[0] == captions[1]


def test_an_image_too_long_for_the_context_names_the_image_flags_not_seq_len(tmp_path, capsys):
    """--seq-len is refused for a vision run, so the refusal must not ask for it."""
    assert lmref("train", *ARCH, "--image-size", "128", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "--image-size 128 --patch-size 4: a sample is 1141 tokens (1024 for the image" in err
    assert "max_seq_len 1024; raise --max-seq-len, or lower --image-size or raise --patch-size" in err
    assert "--seq-len" not in err and not (tmp_path / "run").exists()


def test_vision_flags_and_unsupported_options_are_refused_by_name(learned, tmp_path, capsys):
    assert lmref("train", "--arch", "gpt2", "--projector-steps", "3", "--out", tmp_path / "a") == 2
    assert "--projector-steps: only for a new run of an arch with a vision tower" in capsys.readouterr().err
    for flags, expected in ((["--data", "x.txt"], "--data: not for a vision run"),
                            (["--stop-after", "3"], "--stop-after: not supported for a vision run"),
                            # its reason, not the stages' (--grad-accum was "cannot be resumed")
                            (["--grad-accum", "2"], "each step is one batch of --batch-size scenes: lower "
                                                    "--batch-size instead"),
                            (["--text-steps", "-1"], "--text-steps must be >= 0"),
                            (["--vision-n-heads", "0"], "--vision-n-heads must be >= 1, got 0"),  # was taken as unset
                            (["--vision-d-model", "-4"], "--vision-d-model must be >= 1, got -4")):
        assert lmref("train", *STAGED, *flags, "--out", tmp_path / "b") == 2
        assert expected in capsys.readouterr().err
    assert lmref("train", "--resume", learned) == 2
    assert "cannot be resumed" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_shapes_writes_the_scenes_and_their_captions(scenes):
    v = tower(16)
    lines = (scenes / "captions.tsv").read_text().splitlines()
    assert lines == [f"scene-00000{i}.png\t{caption(scene(5, i))}" for i in range(2)]
    for i in range(2):  # PNG is lossless: the file reads back as the training pixels
        assert np.array_equal(read_image(scenes / f"scene-00000{i}.png", v)[0], examples(5, i, 1, 16)[0][0])


def test_a_sample_scores_its_caption_and_end_alone():
    tokenizer, v = ImageByteTokenizer(), tower(12)
    captions = [caption(scene(0, i)) for i in range(6)]
    inputs, targets = encode(tokenizer, v, captions)
    assert inputs.shape == targets.shape == (6, sequence_length(v))
    for row, text in enumerate(captions):
        assert (inputs[row, : v.tokens_per_image] == 256).all() and (inputs[row, v.tokens_per_image :] < 256).all()
        scored = targets[row][targets[row] != 256]
        assert tokenizer.decode(scored) == text + CAPTION_END
        assert targets[row, v.tokens_per_image - 1] == scored[0]  # the last placeholder predicts the caption


def test_the_image_tokenizer_keeps_text_off_the_placeholder(tmp_path):
    tokenizer = ImageByteTokenizer()
    ids = tokenizer.encode("ÿ shapes")  # bytes 0xc3 0xbf ...: never 256
    assert ids.max() < 256 and tokenizer.decode([256, *ids, 256]) == "<image>ÿ shapes<image>"
    assert isinstance(load_tokenizer(tmp_path, tokenizer.info, 257), ImageByteTokenizer)
    with pytest.raises(CheckpointError, match="image_token_id 256 and vocab_size 257"):
        load_tokenizer(tmp_path, tokenizer.info | {"image_token_id": 250}, 257)
