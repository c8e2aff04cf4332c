"""Tokenizers for training: raw UTF-8 bytes (the default) or a byte-level BPE trained with the
Hugging Face `tokenizers` library on the training corpus.

Both map any text to ids and back without an unknown token.  The byte tokenizer has 256 ids
(one per byte value) and no file; a BPE tokenizer is saved with each checkpoint as
`tokenizer.json` (the `tokenizers` format, loadable by `tokenizers.Tokenizer.from_file` and
by transformers' `PreTrainedTokenizerFast(tokenizer_file=...)`).  The checkpoint's
`trainer_state.json` records which one a run used (`info`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmref.train.errors import TrainError

BYTE_VOCAB = 256
TOKENIZER_FILE = "tokenizer.json"
KINDS = ("byte", "bpe")


class ByteTokenizer:
    """Token id = byte value of the UTF-8 encoding."""

    kind = "byte"
    vocab_size = BYTE_VOCAB

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        """Text of `ids`; a sequence cut inside a multi-byte character decodes to U+FFFD there."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    @property
    def info(self) -> dict:
        """What trainer_state.json records (`load_tokenizer` reads it back)."""
        return {"kind": self.kind, "vocab_size": self.vocab_size}

    def files(self) -> dict[str, str]:
        """Files to save with a checkpoint: none."""
        return {}


class BPETokenizer:
    """A byte-level BPE (GPT-2 style pre-tokenisation) from the `tokenizers` library."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        """Learn merges on `text` until `vocab_size` ids (the 256 byte symbols included)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size <= BYTE_VOCAB:
            raise TrainError(f"--vocab-size must exceed {BYTE_VOCAB} (the byte alphabet a byte-level BPE "
                             f"starts from), got {vocab_size}")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(tokenizer)

    def encode(self, text: str) -> np.ndarray:
        # One call per line keeps the pre-tokeniser's work small and is parallel inside tokenizers.
        lines = text.splitlines(keepends=True)
        ids = [e.ids for e in self.tokenizer.encode_batch(lines)]
        return np.fromiter((i for line in ids for i in line), dtype=np.int32)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    @property
    def info(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "file": TOKENIZER_FILE}

    def files(self) -> dict[str, str]:
        """{"tokenizer.json": the tokenizer in the `tokenizers` JSON format}."""
        return {TOKENIZER_FILE: self.to_json()}

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))


def load_tokenizer(directory: Path, info: dict, source: str = "trainer_state.json") -> ByteTokenizer | BPETokenizer:
    """The tokenizer a checkpoint in `directory` describes with `info` (a tokenizer's `.info`,
    read from `directory`/`source`).  Its file must lie inside `directory` (convert/paths.py)."""
    from lmref.convert.errors import CheckpointError
    from lmref.convert.paths import inside

    if not isinstance(info, dict):
        raise CheckpointError(f"{Path(directory) / source}: the tokenizer entry is not a JSON object: {info!r}")
    kind = info.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind != "bpe":
        raise CheckpointError(f"{directory}: unknown tokenizer kind {kind!r} (known: {', '.join(KINDS)})")
    # the file must lie inside the checkpoint: trainer_state.json may not send lmref elsewhere
    path = inside(directory, info.get("file", TOKENIZER_FILE), "tokenizer file",
                  str(Path(directory) / source), CheckpointError, "checkpoint directory")
    try:
        tokenizer = BPETokenizer.from_json(path.read_text(encoding="utf-8"))
    except Exception as e:  # OSError, UnicodeDecodeError, or the plain Exception tokenizers raises on bad JSON
        raise CheckpointError(f"{path}: not a readable tokenizers file ({e})") from None
    if tokenizer.vocab_size != info.get("vocab_size"):
        raise CheckpointError(f"{path}: has {tokenizer.vocab_size} ids, the checkpoint says {info.get('vocab_size')}")
    return tokenizer
