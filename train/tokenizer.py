"""Tokenizers for training: raw UTF-8 bytes (the default) or a byte-level BPE trained with the
Hugging Face `tokenizers` library on the training corpus.

Both map any text to ids and back without an unknown token.  The byte tokenizer has 256 ids
(one per byte value) and no file; a vision run's (`ImageByteTokenizer`) adds one id after the
bytes, 256, LLaVA's `<image>` placeholder, which no text encodes to; a BPE tokenizer is saved with each checkpoint as
`tokenizer.json` (the `tokenizers` format, loadable by `tokenizers.Tokenizer.from_file` and
by transformers' `PreTrainedTokenizerFast(tokenizer_file=...)`).  The checkpoint's
`trainer_state.json` records which one a run used (`info`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmref.train.errors import TrainError
from lmref.train.settings import MAX_VOCAB_SIZE

BYTE_VOCAB = 256
IMAGE_TEXT = "<image>"  # how a decoded image placeholder reads (LLaVA's DEFAULT_IMAGE_TOKEN)
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


class ImageByteTokenizer(ByteTokenizer):
    """The byte tokenizer and one more id, IMAGE_TOKEN_ID = 256, for the image placeholder
    (LLaVA's `<image>`, whose rows the image's features replace).  Text encodes to bytes only,
    so no text token can ever be the placeholder; the model's `vision.image_token_id` is this id
    and its vocabulary has 257 rows (train/multimodal.py)."""

    image_token_id = BYTE_VOCAB
    vocab_size = BYTE_VOCAB + 1

    def decode(self, ids) -> str:
        """Text of `ids`; a placeholder decodes to IMAGE_TEXT."""
        pieces, run = [], []
        for i in (int(i) for i in ids):
            if i == self.image_token_id:
                pieces += [bytes(run).decode("utf-8", errors="replace"), IMAGE_TEXT]
                run = []
            else:
                run.append(i)
        return "".join(pieces) + bytes(run).decode("utf-8", errors="replace")

    @property
    def info(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "image_token_id": self.image_token_id}


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

        if not BYTE_VOCAB < vocab_size <= MAX_VOCAB_SIZE:  # a larger one: an allocation that aborts the process
            raise TrainError(f"--vocab-size must exceed {BYTE_VOCAB} (the byte alphabet a byte-level BPE "
                             f"starts from) and be at most {MAX_VOCAB_SIZE:,}, got {vocab_size}")
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


def load_tokenizer(directory: Path, info: dict, model_vocab: int,
                   source: str = "trainer_state.json") -> ByteTokenizer | BPETokenizer:
    """The tokenizer a checkpoint in `directory` describes with `info` (a tokenizer's `.info`,
    read from `directory`/`source`), for a model of `model_vocab` ids: `lmref train` sizes the
    model's vocabulary to its tokenizer, so any other count is a damaged checkpoint.  Its file
    must lie inside `directory` (convert/paths.py)."""
    from lmref.convert.errors import CheckpointError

    tokenizer = _tokenizer_of(directory, info, source)
    if tokenizer.vocab_size != model_vocab:
        raise CheckpointError(f"{Path(directory) / source}: its {tokenizer.kind} tokenizer has {tokenizer.vocab_size} "
                              f"ids and the model's vocabulary (config.json) {model_vocab}; they must agree (lmref train "
                              "sizes the vocabulary to the tokenizer)")
    return tokenizer


def _tokenizer_of(directory: Path, info: dict, source: str) -> ByteTokenizer | BPETokenizer:
    from lmref.convert.errors import CheckpointError
    from lmref.convert.paths import inside

    if not isinstance(info, dict):
        raise CheckpointError(f"{Path(directory) / source}: the tokenizer entry is not a JSON object: {info!r}")
    kind = info.get("kind")
    if kind == "byte":
        return _byte_tokenizer(directory, info, source)
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


def _byte_tokenizer(directory: Path, info: dict, source: str) -> ByteTokenizer:
    """The byte tokenizer `info` describes: plain (no "image_token_id"), or with the image
    placeholder after the bytes."""
    from lmref.convert.errors import CheckpointError

    image = info.get("image_token_id")
    if image is None:
        return ByteTokenizer()
    tokenizer = ImageByteTokenizer()
    if image != tokenizer.image_token_id or info.get("vocab_size") != tokenizer.vocab_size:
        raise CheckpointError(f"{Path(directory) / source}: a byte tokenizer with an image placeholder has "
                              f"image_token_id {tokenizer.image_token_id} and vocab_size {tokenizer.vocab_size}, "
                              f"got {image!r} and {info.get('vocab_size')!r}")
    return tokenizer
