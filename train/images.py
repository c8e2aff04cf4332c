"""Image files for vision runs, read and written with Pillow: `read_image` for `lmref generate
--image` (the image as the model's `pixel_values`, or an error naming what does not fit), and
`write_scenes` for `lmref shapes` (scenes of the embedded set as PNG files with their captions).

An image is refused rather than converted: one of another size, or with another channel
count than the tower's (an RGBA, grayscale or palette image), would be resized or converted
by a guess; the message names what the model takes.  Pixels are normalised as the training
images are (train/shapes.py `pixels`: CLIP's rescale and mean / std, channels first).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from pathlib import Path

import numpy as np

from lmref.spec.config import VisionConfig
from lmref.train.errors import TrainError
from lmref.train.shapes import caption, draw, pixels, scene

CAPTIONS_FILE = "captions.tsv"
SCENE_NAME = re.compile(r"scene-\d{6,}\.png")  # write_scenes' file names
IMAGE_KIND = "shape-images"  # the output kind of `lmref shapes` (spec/outputs.py's marker)
MAX_IMAGE_SIZE = 4096  # `lmref shapes --image-size`: 48 MiB an image in memory (CLIP's towers take 224 to 336)
MAX_SCENES = 100_000  # `lmref shapes --count`: 30 times the 3,200 scenes a default vision run reads


def read_image(path: str | Path, v: VisionConfig) -> np.ndarray:
    """The image file at `path` as pixel values [1, C, H, W] float32 for a tower `v`, or
    TrainError naming the file and what does not fit: not an image, its size, its channels."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"--image {path}: no such file" + (" (it is a directory)" if path.is_dir() else ""))
    expected = (v.image_size, v.image_size)
    try:
        with Image.open(path) as image:  # the header only: the size is checked before a pixel is decoded
            if image.size == expected:
                image.load()
    except Image.DecompressionBombError as e:  # Pillow's guard against a file that decodes to gigabytes
        raise TrainError(f"--image {path}: {e}; the model takes {v.image_size}x{v.image_size}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise TrainError(f"--image {path}: not an image file Pillow can read ({e})") from None
    if image.size != expected:
        raise TrainError(f"--image {path}: the image is {image.size[0]}x{image.size[1]} pixels; the model takes "
                         f"{v.image_size}x{v.image_size} (its vision.image_size); resize it first")
    if v.n_channels != 3:
        raise TrainError(f"--image {path}: the model's tower reads {v.n_channels} channels; --image reads RGB images")
    if image.mode != "RGB":
        bands = image.getbands()
        raise TrainError(f"--image {path}: the image has {len(bands)} channel(s) (mode {image.mode}: "
                         f"{', '.join(bands)}); the model takes RGB images, 3 channels; convert it first")
    return pixels(image)[None]  # [1, 3, H, W]


def write_scenes(out: Path, seed: int, start: int, count: int, image_size: int) -> list[tuple[Path, str]]:
    """Scenes start .. start + count - 1 of `seed` as `out`/scene-{index}.png (RGB, image_size
    pixels a side), and `out`/captions.tsv (file name, tab, caption per line); returns (path,
    caption) of each.  `out` is claimed by the caller.  A rerun into the same directory first
    removes the scenes its captions.tsv lists (this command's files, and only those).  Each
    scene is drawn into a temporary file, then renamed into place and listed in captions.tsv
    with Ctrl-C held back between the two (`_sigint_held`), so a run interrupted anywhere leaves
    captions.tsv listing every scene file it wrote, and a rerun replaces them all."""
    captions = out / CAPTIONS_FILE
    for name in _listed_scenes(captions):
        (out / name).unlink(missing_ok=True)
    written = []
    with open(captions, "w", encoding="utf-8") as listing:
        for index in range(start, start + count):
            shapes = scene(seed, index)
            path, text = out / f"scene-{index:06d}.png", caption(shapes)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # spec/outputs.py's REPLACING_NAME
            try:
                draw(shapes, image_size).save(tmp, format="PNG")
                with _sigint_held():  # the file and its line appear together, or neither
                    os.replace(tmp, path)
                    listing.write(f"{path.name}\t{text}\n")
                    listing.flush()
            finally:
                tmp.unlink(missing_ok=True)
            written.append((path, text))
    return written


@contextlib.contextmanager
def _sigint_held():
    """Within the block, Ctrl-C (SIGINT) is noted instead of handled, and handled as before the
    block (KeyboardInterrupt, by default) when it ends: a rename and the line that lists it are
    not parted (a signal can otherwise land between any two bytecodes).  Elsewhere than the main
    thread, where no signal handler can be set, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted = []
    previous = signal.signal(signal.SIGINT, lambda *_: noted.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted and callable(previous):  # Python's default_int_handler raises KeyboardInterrupt
        previous(signal.SIGINT, None)
    elif noted and previous == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)


def _listed_scenes(captions: Path) -> list[str]:
    """The scene files a captions.tsv names (names of the form this command writes, nothing else)."""
    if not captions.is_file():
        return []
    names = (line.split("\t", 1)[0] for line in captions.read_text(encoding="utf-8").splitlines())
    return [name for name in names if SCENE_NAME.fullmatch(name)]
