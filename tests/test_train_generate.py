"""Generation: KV-cache decoding equals the full forward, seeds reproduce, filters filter."""

from __future__ import annotations

import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

import torch

from lmref.train.errors import TrainError
from lmref.train.generate import filter_logits, generate, load_generator
from tests.train_helpers import lmref, one_thread, shared_run


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    model, tokenizer, _ = load_generator(shared_run(tmp_path_factory), "cpu")
    return model, tokenizer


def test_greedy_is_the_argmax_of_the_full_forward_at_every_step(loaded):
    model, tokenizer = loaded
    prompt = tokenizer.encode("The try statement").tolist()
    with one_thread():
        out = generate(model, prompt, 24, temperature=0)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + out]))[0]  # [S, vocab], no cache
    predicted = logits[len(prompt) - 1 : -1].argmax(dim=-1).tolist()  # position t predicts t + 1
    assert predicted == out


def test_same_seed_same_text(loaded):
    model, tokenizer = loaded
    prompt = tokenizer.encode("Assert statements").tolist()
    with one_thread():
        a, b, c = (generate(model, prompt, 40, temperature=1.0, top_k=50, top_p=0.95, seed=s) for s in (7, 7, 8))
    assert a == b and a != c


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.79)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_k=3, top_p=0.7)).tolist() == [[False, True, False, True]]


def test_generation_errors(loaded):
    model, tokenizer = loaded
    with pytest.raises(TrainError, match="the prompt is empty"):
        generate(model, [], 5)
    with pytest.raises(TrainError, match="exceeds the model's context max_seq_len 1024"):
        generate(model, [65] * 1000, 100)
    with pytest.raises(TrainError, match="--top-p must be in"):
        generate(model, [65], 5, top_p=1.5)


def test_generate_command(tmp_path_factory, capsys):
    run_dir = shared_run(tmp_path_factory)
    capsys.readouterr()
    args = ["generate", "--checkpoint", run_dir, "--prompt", "The ", "--max-new-tokens", "30", "--seed", "3"]
    assert lmref(*args) == 0
    first = capsys.readouterr().out
    assert lmref(*args) == 0
    assert capsys.readouterr().out == first and first.startswith("The ")
    assert lmref("generate", "--checkpoint", run_dir / "absent", "--prompt", "x") == 2
    assert "no such checkpoint directory" in capsys.readouterr().err


def test_generate_refuses_an_unknown_device(tmp_path_factory, capsys):
    run_dir = shared_run(tmp_path_factory)
    capsys.readouterr()
    assert lmref("generate", "--checkpoint", run_dir, "--prompt", "The", "--device", "tpu",
                 "--max-new-tokens", "5") == 2
    assert capsys.readouterr().err == "lmref generate: error: --device must be one of auto, cpu, cuda, got 'tpu'\n"


@pytest.mark.parametrize("seed, read", [("-1", -1), ("1e30", 10**30)])
def test_generate_refuses_a_seed_that_train_or_torch_would_not_take(seed, read, tmp_path_factory, capsys):
    """-1 was accepted (train and shapes refuse negative seeds); 1e30 was a ValueError traceback,
    and is read exactly (not as the float nearest it, 1000000000000000019884624838656)."""
    run_dir = shared_run(tmp_path_factory)
    capsys.readouterr()
    assert lmref("generate", "--checkpoint", run_dir, "--prompt", "The", "--seed", seed, "--max-new-tokens", "5") == 2
    assert capsys.readouterr().err == (f"lmref generate: error: --seed must be an integer from 0 to 2**64 - 1, "
                                       f"got {read}\n")


@pytest.mark.parametrize("seed", [str(2**64), "99999999999999999999"])
def test_train_shapes_and_generate_take_the_same_seeds(seed, tmp_path_factory, tmp_path, capsys):
    """generate refused 2**64 "as train and shapes take it", but train and shapes took any size."""
    run_dir = shared_run(tmp_path_factory)
    capsys.readouterr()
    commands = {"train": ["train", "--arch", "gpt2", "--out", tmp_path / "run"],
                "shapes": ["shapes", "--out", tmp_path / "scenes"],
                "generate": ["generate", "--checkpoint", run_dir, "--prompt", "The", "--max-new-tokens", "2"]}
    for name, args in commands.items():
        assert lmref(*args, "--seed", seed) == 2
        assert capsys.readouterr().err == (f"lmref {name}: error: --seed must be an integer from 0 to 2**64 - 1, "
                                           f"got {seed}\n")
    assert not (tmp_path / "run").exists() and not (tmp_path / "scenes").exists()
    assert lmref("shapes", "--out", tmp_path / "scenes", "--seed", str(2**64 - 1)) == 0
    assert lmref(*commands["generate"], "--seed", str(2**64 - 1)) == 0


SMALLEST_FLOAT = 5e-324  # the smallest positive float64 (a subnormal); float32 rounds it to 0


@pytest.mark.parametrize("temperature", [SMALLEST_FLOAT, 1e-45, 1e-39, 1e-30])
def test_a_tiny_temperature_samples_the_argmax(temperature):
    """logits / 1e-39 overflowed to inf, and the softmax of inf - inf was NaN: torch.multinomial's
    RuntimeError "probability tensor contains either inf, nan or element < 0"."""
    from lmref.train.generate import next_token

    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[1.0, 0.5, 3.0, float("-inf")], [4.0, 4.0, -2.0, 0.0]])
    for _ in range(20):
        first, tied = next_token(logits, temperature, None, None, generator).tolist()
        assert first == 2 and tied in (0, 1)  # one-hot on the argmax; a tie shared


def test_generate_with_the_smallest_positive_temperature_is_greedy(tmp_path_factory, capsys):
    run_dir = shared_run(tmp_path_factory)
    args = ["generate", "--checkpoint", run_dir, "--prompt", "The ", "--max-new-tokens", "20", "--device", "cpu"]
    capsys.readouterr()
    assert lmref(*args, "--greedy") == 0
    greedy = capsys.readouterr().out
    assert lmref(*args, "--temperature", repr(SMALLEST_FLOAT), "--seed", "1") == 0
    assert capsys.readouterr().out == greedy


def test_a_model_folder_not_written_by_train_is_named_with_what_takes_it(tmp_path_factory, tmp_path, capsys):
    """A Hugging Face folder, or an ONNX export, was called "an lmref model checkpoint"."""
    run_dir = shared_run(tmp_path_factory)
    assert lmref("convert", "--to-hf", run_dir / "step-000006", "--out", tmp_path / "hf") == 0
    export = tmp_path / "export"
    export.mkdir()
    for name in ("config.json", "export.json"):  # what `lmref export` writes beside its graphs
        (export / name).write_text("{}")
    capsys.readouterr()
    tail = ("; --resume and generate --checkpoint take a run directory of `lmref train` or one of its step-N "
            "checkpoints\n")
    assert lmref("generate", "--checkpoint", tmp_path / "hf", "--prompt", "x") == 2
    assert capsys.readouterr().err == (
        f"lmref generate: error: {tmp_path / 'hf'}: a Hugging Face model folder (its config.json has a model_type), "
        "not a run of `lmref train` (`lmref convert --from-hf` reads it; it has no lmref tokenizer to generate "
        "with)" + tail)
    assert lmref("generate", "--checkpoint", export, "--prompt", "x") == 2
    assert capsys.readouterr().err == (
        f"lmref generate: error: {export}: an ONNX export (`lmref export`), not a run of `lmref train` "
        f"(generate from it with `lmref generate --onnx {export}`)" + tail)
