"""train.data and train.tokenizer: the corpus, the split, batches and their position, tokenizers."""

from __future__ import annotations

import numpy as np
import pytest

from lmref.train.data import (
    BatchStream,
    Windows,
    default_corpus,
    load_corpus,
    read_corpus,
    shard,
    split,
    unigram_cross_entropy,
    validation_batches,
)
from lmref.train.errors import TrainError
from lmref.train.tokenizer import BPETokenizer, ByteTokenizer


def test_default_corpus_is_deterministic_english_text():
    text, sha = load_corpus(None)
    assert text == default_corpus() and len(text) > 400_000
    assert text.startswith('The "assert" statement')
    assert load_corpus("pydoc_data")[1] == sha


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"  \n\t\n", "whitespace only"),
    (b"text\x00\x01\x02binary", "binary file (NUL byte at offset 4)"),
    (b"caf\xe9 au lait", "not UTF-8 text (byte 0xe9 at offset 3"),
])
def test_read_corpus_refuses_unusable_files(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(TrainError, match="corpus.txt") as error:
        read_corpus(path)
    assert message in str(error.value)


def test_read_corpus_missing_file(tmp_path):
    with pytest.raises(TrainError, match="no such file"):
        read_corpus(tmp_path / "absent.txt")


def test_split_is_the_last_fraction():
    tokens = np.arange(100)
    train, val = split(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(TrainError, match="--val-fraction"):
        split(tokens, 1.0)


def test_windows_overlap_by_one_token():
    windows = Windows(np.arange(10), seq_len=3, what="training")
    assert windows.count == 3
    assert windows.take(np.array([0, 2])).tolist() == [[0, 1, 2, 3], [6, 7, 8, 9]]


def test_batch_stream_resumes_from_its_position():
    windows = Windows(np.arange(1000), seq_len=7, what="training")  # 142 windows
    first = BatchStream(windows, batch_size=10, seed=3)
    batches = [first.next_batch() for _ in range(30)]  # crosses two epoch boundaries
    resumed = BatchStream(windows, batch_size=10, seed=3, position=17 * 10)
    assert all(np.array_equal(resumed.next_batch(), b) for b in batches[17:])
    epoch0 = np.concatenate(batches)[:142, 0] // 7  # window index of the first 142 samples
    assert sorted(epoch0.tolist()) == list(range(142))  # an epoch visits every window once
    other_seed = BatchStream(windows, batch_size=10, seed=4).next_batch()
    assert not np.array_equal(other_seed, batches[0])


def test_too_short_for_one_batch():
    with pytest.raises(TrainError, match="one batch needs 8"):
        BatchStream(Windows(np.arange(100), seq_len=32, what="training"), batch_size=8, seed=0)
    with pytest.raises(TrainError, match="^the embedded corpus .*validation split .* a larger --val-fraction$"):
        validation_batches(Windows(np.arange(50), seq_len=32, what="validation"), batch_size=2, n_batches=1)
    with pytest.raises(TrainError, match="^--data notes.txt: the training split .* a smaller --val-fraction$"):
        BatchStream(Windows(np.arange(100), seq_len=32, what="training", source="notes.txt"), batch_size=8, seed=0)


def test_shard_partitions_the_global_batch():
    batch = np.arange(24).reshape(12, 2)
    parts = [shard(batch, rank, 2, 3) for rank in range(2)]
    assert [len(p) for p in parts] == [3, 3] and all(m.shape == (2, 2) for p in parts for m in p)
    assert np.array_equal(np.concatenate([m for p in parts for m in p]), batch)


def test_unigram_cross_entropy():
    train = np.array([0, 0, 1, 1])
    assert unigram_cross_entropy(train, np.array([0, 1]), vocab_size=2) == pytest.approx(np.log(2))
    skewed = unigram_cross_entropy(np.array([0] * 98), np.array([0]), vocab_size=2)
    assert skewed == pytest.approx(-np.log(99 / 100))


def test_byte_tokenizer_round_trip():
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("héllo")
    assert ids.tolist() == list("héllo".encode()) and tokenizer.vocab_size == 256
    assert tokenizer.decode(ids) == "héllo"
    assert tokenizer.decode(ids[:2]) == "h\ufffd"  # cut inside a character


def test_bpe_tokenizer_trains_round_trips_and_serialises():
    pytest.importorskip("tokenizers")
    text = default_corpus()[:50_000]
    tokenizer = BPETokenizer.train(text, 300)
    assert tokenizer.vocab_size == 300
    ids = tokenizer.encode(text)
    assert len(ids) < len(text.encode()) and ids.max() < 300
    assert tokenizer.decode(ids) == text
    again = BPETokenizer.from_json(tokenizer.to_json())
    assert again.encode(text).tolist() == ids.tolist()
    with pytest.raises(TrainError, match="must exceed 256"):
        BPETokenizer.train(text, 256)
