"""Training samples of a vision run: the embedded shapes set (train/shapes.py) as LLaVA's
pretraining conversations, token sequences with their targets and images.

A sample is LLaVA's "plain" conversation (the authors' llava/train/train.py
`preprocess_plain`: the image token, then the caption, then the template's separator "\\n";
LLaVA-1.5 pretrains on it), with the image token expanded to the placeholders its features fill:

    [image placeholder] * tokens_per_image  +  caption bytes  +  "\\n"

Every sample is cut to the same length: the forward reads `sequence_length(v)` tokens, the
placeholders and the longest caption the set can draw with its "\\n" (the last one is only a
target); a shorter caption is padded with CAPTION_END, whose rows no scored target reads.
Targets are the next tokens, except where the next token is a placeholder or padding: there
the target is the placeholder id, which impl_torch's objective skips (impl_torch/objective.py
`scored_targets`), as LLaVA labels the image's positions IGNORE_INDEX and its collator pads the
labels with IGNORE_INDEX (llava/train/train.py `DataCollatorForSupervisedDataset`).  So the
loss is the caption loss: the caption's bytes and its "\\n", each predicted from the image and
the caption before it.

Scenes: training reads scene `position`, `position + 1`, ... of the run's seed (each scene is
a pure function of (seed, index), drawn when it is read; no epochs), validation the fixed
scenes from VALIDATION_START on, which training never reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmref.spec.config import VisionConfig
from lmref.train.shapes import COLOURS, COUNTS, KINDS, QUADRANTS, SIZES, Shape, caption, examples
from lmref.train.tokenizer import ImageByteTokenizer

CAPTION_END = "\n"  # LLaVA's "plain" separator: it ends each caption (and pads)
VALIDATION_START = 10**9  # the first validation scene's index


def longest_caption() -> str:
    """The longest caption train/shapes.py can write: the most shapes, each with the longest
    words (its length does not depend on which quadrants hold them, only how long their names are)."""
    longest = lambda words: max(words, key=len)  # noqa: E731
    quadrants = sorted(sorted(range(len(QUADRANTS)), key=lambda q: len(QUADRANTS[q]))[-len(COUNTS):])
    return caption([Shape(longest(KINDS), longest(COLOURS), longest(SIZES), q) for q in quadrants])


def sequence_length(v: VisionConfig) -> int:
    """Tokens each sample forwards: the placeholders, the longest caption and its end but the last token."""
    return v.tokens_per_image + len((longest_caption() + CAPTION_END).encode("utf-8")) - 1


@dataclass(frozen=True)
class CaptionBatch:
    """Samples of a batch: what the model reads and what it is scored on."""

    pixels: np.ndarray  # [B, C, H, W] float32, CLIP-normalised
    inputs: np.ndarray  # [B, L] int64: placeholders, caption, end, padding
    targets: np.ndarray  # [B, L] int64: the next tokens; the placeholder id where none is scored
    captions: list[str]


def encode(tokenizer: ImageByteTokenizer, v: VisionConfig, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), int64 [len(captions), sequence_length(v)] each (the module docstring)."""
    length, end = sequence_length(v), int(tokenizer.encode(CAPTION_END)[0])
    image = tokenizer.image_token_id
    inputs = np.full((len(captions), length + 1), end, dtype=np.int64)  # [B, L + 1]
    targets = np.full((len(captions), length), image, dtype=np.int64)  # [B, L]: nothing scored yet
    for row, text in enumerate(captions):
        words = tokenizer.encode(text + CAPTION_END)
        sample = np.concatenate([np.full(v.tokens_per_image, image), words])
        inputs[row, : len(sample)] = sample
        targets[row, : len(sample) - 1] = sample[1:]
    return inputs[:, :-1], targets


def caption_batch(tokenizer: ImageByteTokenizer, v: VisionConfig, seed: int, start: int, count: int) -> CaptionBatch:
    """Scenes start .. start + count - 1 of `seed` as a batch."""
    pixels, captions = examples(seed, start, count, v.image_size)
    inputs, targets = encode(tokenizer, v, captions)
    return CaptionBatch(pixels, inputs, targets, captions)


class CaptionStream:
    """Training batches of `batch_size` scenes; `position` counts the scenes read."""

    def __init__(self, tokenizer: ImageByteTokenizer, v: VisionConfig, seed: int, batch_size: int, position: int = 0):
        self.tokenizer, self.v, self.seed, self.batch_size, self.position = tokenizer, v, seed, batch_size, position

    def next_batch(self) -> CaptionBatch:
        batch = caption_batch(self.tokenizer, self.v, self.seed, self.position, self.batch_size)
        self.position += self.batch_size
        return batch


def validation_batches(tokenizer: ImageByteTokenizer, v: VisionConfig, seed: int, batch_size: int,
                       n_batches: int) -> list[CaptionBatch]:
    """`n_batches` batches of the held-out scenes, the same at every evaluation."""
    return [caption_batch(tokenizer, v, seed, VALIDATION_START + i * batch_size, batch_size) for i in range(n_batches)]
