"""`lmref train` on every preset, with a BPE tokenizer, and each kind of bad input refused
with a clear message (exit code 2, nothing trained)."""

from __future__ import annotations

import json

import pytest

for _module in ("torch", "tokenizers", "matplotlib", "tqdm"):  # the `torch` and `train` extras
    pytest.importorskip(_module)

from lmref.spec.presets import PRESETS
from lmref.train.settings import model_config
from tests.train_helpers import TINY, lmref, records, shared_run

STEP = ["--steps", "1", "--seq-len", "16", "--batch-size", "2", "--eval-batches", "1", "--no-progress"]
# A preset with a vision tower trains on images (train/multimodal.py; tests/test_train_llava.py):
# one step per phase, 8-pixel images; the byte tokenizer and the image placeholder.
VISION_STEP = ["--steps", "1", "--text-steps", "1", "--projector-steps", "1", "--image-size", "8", "--batch-size", "2",
               "--eval-batches", "1", "--no-progress"]


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_every_preset_trains(arch, tmp_path):
    vision = PRESETS[arch].vision is not None
    assert lmref("train", "--arch", arch, *(VISION_STEP if vision else STEP), "--out", tmp_path / "run") == 0
    (run,) = records(tmp_path / "run", "run")
    assert run["config"]["vocab_size"] == (257 if vision else 256) and run["arch"] == arch
    assert records(tmp_path / "run", "train")[0]["loss"] > 0


def test_size_flags(tmp_path):
    assert lmref("train", "--arch", "llama3", "--d-model", "96", "--n-heads", "6", "--n-layers", "1",
                 "--max-seq-len", "64", *STEP, "--out", tmp_path / "run") == 0
    config = records(tmp_path / "run", "run")[0]["config"]
    assert (config["d_model"], config["n_heads"], config["head_dim"], config["n_layers"]) == (96, 6, 16, 1)
    assert config["n_kv_heads"] == 1 and config["max_seq_len"] == 64  # tiny llama3: 4 query heads per KV head
    assert model_config("gpt2", {"d_model": 128}, 256).d_ff == 512  # GPT-2's d_ff = 4 d_model


@pytest.mark.parametrize("n_heads, n_kv_heads", [(8, 2), (16, 4), (12, 3), (6, 1), (7, 1), (9, 1), (10, 2), (3, 1)])
def test_kv_heads_follow_tinys_groups_and_always_divide_the_heads(n_heads, n_kv_heads):
    """tiny llama3: 4 query heads per KV head; where n_heads is no multiple of 4, the most KV
    heads below n_heads / 4 that divide n_heads (--n-heads 9 was refused, naming n_kv_heads 2,
    a value nobody gave)."""
    assert model_config("llama3", {"n_heads": n_heads}, 256).n_kv_heads == n_kv_heads


def test_bpe_tokenizer_is_saved_and_used(tmp_path, capsys):
    out = tmp_path / "run"
    assert lmref("train", "--arch", "llama3", "--tokenizer", "bpe", "--vocab-size", "320", *STEP,
                 "--out", out) == 0
    assert records(out, "run")[0]["config"]["vocab_size"] == 320
    assert json.loads((out / "step-000001" / "trainer_state.json").read_text())["tokenizer"]["kind"] == "bpe"
    assert (out / "step-000001" / "tokenizer.json").is_file()
    assert "vocab 320) on 1 process(es)" in capsys.readouterr().out  # as asked: nothing to say
    assert lmref("generate", "--checkpoint", out, "--prompt", "The ", "--max-new-tokens", "5", "--seed", "0") == 0
    assert capsys.readouterr().out.startswith("The ")


def test_a_bpe_vocabulary_smaller_than_asked_is_said(tmp_path, capsys):
    """A corpus with fewer pairs to merge than --vocab-size asks gives a smaller vocabulary, which
    the model takes; the start line said only "vocab 283" before."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat, and the dog sat on the log.\n" * 40)
    out = tmp_path / "run"
    assert lmref("train", "--arch", "llama3", "--tokenizer", "bpe", "--vocab-size", "1e6", "--data", corpus, *STEP,
                 "--out", out) == 0
    vocab = records(out, "run")[0]["config"]["vocab_size"]
    assert 256 < vocab < 400
    assert (f"vocab {vocab}, of the 1,000,000 --vocab-size asked: the corpus has no more pairs to merge) on 1 "
            "process(es)") in capsys.readouterr().out


def _refused(capsys, *args) -> str:
    assert lmref("train", *args) == 2
    return capsys.readouterr().err


def test_unknown_preset_lists_the_known_ones(capsys):
    err = _refused(capsys, "--arch", "llama9", *STEP)
    assert "--arch 'llama9': unknown preset; known presets: bloom-176b, bloom-560m, bloom-7b1, dbrx, falcon-40b" in err and "olmo-alibi" in err


def test_a_family_names_its_presets(capsys):
    err = _refused(capsys, "--arch", "mixtral", *STEP)
    assert ("--arch 'mixtral' is a family of 2 presets that differ at the training sizes; train one of them: "
            "mixtral-8x7b, mixtral-8x22b") in err


def test_a_family_of_one_model_trains_its_first_preset():
    """`--arch llava` (the issue's command): llava-1.5-7b and -13b differ only in sizes, which the
    flags set; gemma's presets differ in their attention kind (MQA, MHA), mixtral's in the experts' width."""
    from lmref.train.settings import family_preset

    assert family_preset("llava") == "llava-1.5-7b" and family_preset("bloom") == "bloom-560m"
    assert family_preset("gemma") == "gemma" and family_preset("mixtral") == "mixtral"
    assert family_preset("llama3") == "llama3" and family_preset(None) is None


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"short text, not nearly enough for a batch\n" * 3, "one batch needs 2"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file (NUL byte at offset 8)"),
    ("Größe".encode("latin-1") * 100, "not UTF-8 text (byte 0xf6 at offset 2"),
])
def test_bad_data_files(tmp_path, capsys, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    err = _refused(capsys, "--arch", "gpt2", "--data", path, *STEP, "--out", tmp_path / "run")
    assert str(path) in err and message in err
    assert not (tmp_path / "run").exists()


def test_missing_data_file(tmp_path, capsys):
    assert "no such file" in _refused(capsys, "--arch", "gpt2", "--data", tmp_path / "nope.txt", *STEP)


def test_resume_of_another_architecture(tmp_path_factory, capsys):
    run_dir = shared_run(tmp_path_factory)  # a gpt2 run
    err = _refused(capsys, "--resume", run_dir, "--arch", "llama3")
    assert "the checkpoint is a 'gpt2' run" in err and "another architecture" in err
    err = _refused(capsys, "--resume", run_dir, "--d-model", "128")
    assert "--d-model 128 differs from the checkpoint's d_model 64" in err
    assert "--lr 0.5 differs from the checkpoint's 0.003" in _refused(capsys, "--resume", run_dir, "--lr", "0.5")


def test_missing_checkpoint_dir(tmp_path, capsys):
    err = _refused(capsys, "--resume", tmp_path / "no-such-run")
    assert f"{tmp_path / 'no-such-run'}: no such checkpoint directory" in err


def test_other_refusals(tmp_path_factory, tmp_path, capsys):
    assert "--arch is required for a new run" in _refused(capsys, *STEP)
    run_dir = shared_run(tmp_path_factory)
    assert "already holds a run" in _refused(capsys, *TINY, "--out", run_dir)
    assert "--seq-len 2048 exceeds the model's context" in _refused(
        capsys, "--arch", "gpt2", "--steps", "1", "--seq-len", "2048", "--out", tmp_path / "a")
    assert "n_kv_heads" in _refused(capsys, "--arch", "llama3", "--n-heads", "6", "--n-kv-heads", "4", *STEP,
                                    "--out", tmp_path / "b")
    assert "--eval-every must be an integer >= 1" in _refused(capsys, "--arch", "gpt2", "--eval-every", "0", *STEP,
                                                              "--out", tmp_path / "c")


@pytest.mark.parametrize("stop", ["0", "-1"])
def test_stop_after_below_one_is_refused_before_anything_is_written(stop, tmp_path, capsys):
    err = _refused(capsys, "--arch", "llama3", *STEP, "--stop-after", stop, "--out", tmp_path / "run")
    assert err == f"lmref train: error: --stop-after must be an integer >= 1, got {stop}\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--n-heads", "0"], "--n-heads must be >= 1, got 0"),  # was "d_model: must be a positive integer, got 0"
    (["--head-dim", "0"], "--head-dim must be >= 1, got 0"),
    (["--head-dim", "-1"], "--head-dim must be >= 1, got -1"),  # was "d_model ... got -8"
    (["--d-model", "64", "--n-heads", "0"], "--n-heads must be >= 1, got 0"),  # was a ZeroDivisionError
    (["--n-kv-heads", "0"], "--n-kv-heads must be >= 1, got 0"),
    (["--tokenizer", "bpe"], "--tokenizer bpe needs --vocab-size N (the BPE vocabulary size, > 256); "
                             "--vocab-size is missing"),
    (["--vocab-size", "300"], "--vocab-size 300 goes with --tokenizer bpe (the byte tokenizer has 256 ids); "
                              "give --tokenizer bpe or drop --vocab-size"),
])
def test_a_refusal_names_the_option_given(flags, message, tmp_path, capsys):
    err = _refused(capsys, "--arch", "llama3", *STEP, *flags, "--out", tmp_path / "run")
    assert err == f"lmref train: error: {message}\n"
    assert not (tmp_path / "run").exists()


VOCAB_LIMIT = ("--vocab-size must exceed 256 (the byte alphabet a byte-level BPE starts from) and be at most "
               "1,048,576 (2**20, four times the largest real vocabularies), got ")


@pytest.mark.parametrize("size", ["1048577", "2147483647", "4e9", "99999999999999999999"])
def test_a_huge_vocab_size_is_refused_before_anything_is_written(size, tmp_path, capsys):
    """2**31 - 1 aborted the process (tokenizers' trainer asked for 264 GiB, exit 134), 1e20 was
    an OverflowError traceback."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox. " * 3000)
    err = _refused(capsys, "--arch", "llama3", *STEP, "--data", corpus, "--tokenizer", "bpe", "--vocab-size", size,
                   "--out", tmp_path / "run")
    assert err == f"lmref train: error: {VOCAB_LIMIT}{int(float(size)) if 'e' in size else size}\n"
    assert not (tmp_path / "run").exists()


def test_the_largest_vocab_size_trains_a_tokenizer_in_little_memory(tmp_path):
    """The limit is one the tokenizers library takes cheaply (it reserves a few bytes an id)."""
    import resource

    from lmref.train.errors import TrainError
    from lmref.train.settings import MAX_VOCAB_SIZE
    from lmref.train.tokenizer import BPETokenizer

    text = "The quick brown fox. " * 300
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert 256 < BPETokenizer.train(text, MAX_VOCAB_SIZE).vocab_size < 400
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: under 512 MiB more
    with pytest.raises(TrainError, match="at most 1,048,576, got 1048577"):
        BPETokenizer.train(text, MAX_VOCAB_SIZE + 1)


def test_a_new_run_that_diverges_keeps_its_log_and_its_directory_takes_the_next_run(tmp_path, capsys):
    """Kept on purpose (docs/training.md, "Divergence"): the marker and metrics.jsonl, whose records
    show the steps before the divergence and the settings that caused it; the same --out takes
    the run started again."""
    out = tmp_path / "run"
    assert lmref("train", *TINY, "--steps", "6", "--lr", "1e30", "--warmup", "0", "--out", out) == 1
    assert "training diverged" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lmref-output.json", "metrics.jsonl"]
    assert records(out, "run")[0]["run"]["lr"] == 1e30 and records(out, "val")[0]["step"] == 0
    assert lmref("train", *TINY, "--steps", "2", "--out", out) == 0
    assert [r["kind"] for r in records(out, "run")] == ["run"] and records(out, "run")[0]["run"]["lr"] == 3e-3


def test_the_end_line_gives_the_last_validations_step_when_a_stop_came_first(tmp_path, capsys):
    """--stop-after between validations: the line names the step the validation loss is from
    (it read as this step's), and a resumed session that ran none says so (it printed nan)."""
    out = tmp_path / "run"
    assert lmref("train", *TINY, "--steps", "10", "--eval-every", "5", "--stop-after", "3", "--out", out) == 0
    val = records(out, "val")
    assert [r["step"] for r in val] == [0]
    assert f"step 3: train loss {records(out, 'train')[-1]['loss']:.4f}, val loss {val[0]['val_loss']:.4f} at step 0 " \
           "(unigram baseline" in capsys.readouterr().out
    assert lmref("train", "--resume", out, "--stop-after", "4") == 0
    assert ", no validation in this session (unigram baseline" in capsys.readouterr().out
    assert lmref("train", "--resume", out, "--stop-after", "5") == 0
    assert f", val loss {records(out, 'val')[-1]['val_loss']:.4f} (unigram baseline" in capsys.readouterr().out


@pytest.mark.parametrize("text, value", [("1000", 1000), ("1e9", 10**9), ("1e30", 10**30), ("2.0", 2), ("1_000", 1000)])
def test_an_integer_flag_reads_integral_numbers_exactly(text, value):
    """1e30 is 10**30, not int(float("1e30")) = 1000000000000000019884624838656."""
    from lmref.commands.train import integer

    assert integer(text) == value


@pytest.mark.parametrize("text", ["1.5", "nan", "inf", "-inf", "ten", ""])
def test_an_integer_flag_refuses_what_is_no_integer(text):
    import argparse

    from lmref.commands.train import integer

    with pytest.raises(argparse.ArgumentTypeError, match="not an integer"):
        integer(text)
