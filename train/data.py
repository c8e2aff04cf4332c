"""The training corpus, its train / validation split, and batches with a resumable position.

Corpus: `--data FILE` (UTF-8 text) or, by default, the English help texts CPython ships in
`pydoc_data.topics` (about 465 kB; nothing is downloaded), joined in sorted key order.

Split: the token stream's last `val_fraction` is the validation split, the rest trains.

Batches: each split is cut into windows of `seq_len + 1` tokens starting every `seq_len`
tokens (a window's last token is the target of its second to last).  Training reads the
windows in a seeded order that is reshuffled every epoch; the order is a pure function of
(seed, epoch) built from `spec.params.uniform01` (SplitMix64 over sha256 keys), so it is the
same on every machine and NumPy version.  The *data position* is the number of windows
consumed: it is all a resumed run needs to continue with the very next batch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from lmref.spec.params import uniform01
from lmref.train.errors import TrainError

DEFAULT_CORPUS = "pydoc_data"


def default_corpus() -> str:
    """CPython's pydoc topic help texts, joined deterministically (sorted by topic name)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name].strip() for name in sorted(topics)) + "\n"


def read_corpus(path: str | Path) -> str:
    """The text of a UTF-8 file, or `TrainError` saying why it cannot be a corpus."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"--data {path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    raw = path.read_bytes()
    if not raw.strip():
        raise TrainError(f"--data {path}: the file is empty" + (" (whitespace only)" if raw else ""))
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise TrainError(f"--data {path}: binary file (NUL byte at offset {nul}); the corpus must be UTF-8 text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TrainError(f"--data {path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start} "
                         f"cannot be decoded: {e.reason})") from None


def load_corpus(data: str | None) -> tuple[str, str]:
    """(text, sha256 of its UTF-8 bytes) of `--data` or of the default corpus."""
    text = default_corpus() if data in (None, DEFAULT_CORPUS) else read_corpus(data)
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def split(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the first 1 - val_fraction of the tokens, then the rest."""
    if not 0 < val_fraction < 1:
        raise TrainError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, round(len(tokens) * val_fraction))
    return tokens[:-n_val], tokens[-n_val:]


class Windows:
    """Windows of seq_len + 1 tokens, the i-th starting at token i * seq_len."""

    def __init__(self, tokens: np.ndarray, seq_len: int, what: str, source: str = DEFAULT_CORPUS):
        self.tokens, self.seq_len, self.what, self.source = tokens, seq_len, what, source
        self.count = max(0, (len(tokens) - 1) // seq_len)

    def take(self, index: np.ndarray) -> np.ndarray:
        """Windows number `index` [n] -> int64 tokens [n, seq_len + 1]."""
        starts = np.asarray(index, dtype=np.int64)[:, None] * self.seq_len  # [n, 1]
        return self.tokens[starts + np.arange(self.seq_len + 1)].astype(np.int64)

    def require(self, batch_size: int) -> None:
        """Raise `TrainError` unless one batch of `batch_size` windows fits."""
        if self.count < batch_size:
            need = batch_size * self.seq_len + 1
            corpus = "the embedded corpus (pydoc_data)" if self.source == DEFAULT_CORPUS else f"--data {self.source}"
            fraction = "a larger" if self.what == "validation" else "a smaller"
            raise TrainError(
                f"{corpus}: the {self.what} split has {len(self.tokens)} tokens: {self.count} "
                f"window(s) of seq_len + 1 = {self.seq_len + 1} tokens, but one batch needs {batch_size} "
                f"({need} tokens); use a longer --data file or a smaller --batch-size / --seq-len / {fraction} "
                "--val-fraction")


class BatchStream:
    """Global training batches of `batch_size` windows; `position` counts the windows consumed."""

    def __init__(self, windows: Windows, batch_size: int, seed: int, position: int = 0):
        windows.require(batch_size)
        self.windows, self.batch_size, self.seed, self.position = windows, batch_size, seed, position
        self._orders: dict[int, np.ndarray] = {}

    @property
    def epoch(self) -> float:
        return self.position / self.windows.count

    def _order(self, epoch: int) -> np.ndarray:
        """The window order of one epoch: a permutation of range(count)."""
        if epoch not in self._orders:
            keys = uniform01(self.seed, f"lmref-train/data-order/epoch-{epoch}", self.windows.count)
            self._orders = {epoch: np.argsort(keys, kind="stable")}  # keep one epoch's order
        return self._orders[epoch]

    def next_batch(self) -> np.ndarray:
        """The next global batch, int64 [batch_size, seq_len + 1]; advances `position`."""
        index = np.arange(self.position, self.position + self.batch_size)
        epochs, offsets = np.divmod(index, self.windows.count)
        chosen = np.concatenate([self._order(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])
        self.position += self.batch_size
        return self.windows.take(chosen)


def validation_batches(windows: Windows, batch_size: int, n_batches: int) -> list[np.ndarray]:
    """The first min(n_batches, what fits) global batches of the validation windows, in order."""
    windows.require(batch_size)
    n = min(n_batches, windows.count // batch_size)
    return [windows.take(np.arange(i * batch_size, (i + 1) * batch_size)) for i in range(n)]


def shard(batch: np.ndarray, rank: int, world_size: int, accum: int) -> list[np.ndarray]:
    """This rank's micro-batches of a global batch [G, T]: rows of rank r are the r-th of
    `world_size` equal blocks, cut into `accum` micro-batches [G / (world_size * accum), T].

    Every micro-batch has the same number of targets, so the mean of the micro-batch mean
    losses over ranks and accumulation steps is the mean loss of the global batch.
    """
    per_rank = len(batch) // world_size
    mine = batch[rank * per_rank : (rank + 1) * per_rank]
    return np.split(mine, accum)


def unigram_cross_entropy(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Nats per token of `val` under the unigram distribution of `train` (add-one smoothed):
    the loss of the best model that ignores context, the bar a trained LM must go under."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-log_p[val].mean())
