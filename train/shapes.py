"""An embedded image-caption set for training LLaVA-style models: coloured shapes on a plain
background, drawn with Pillow, every scene a pure function of (seed, index).

A scene holds one to three shapes, each in its own quadrant of the image: a kind (circle,
square, triangle), a colour (red, green, blue, yellow) and a size (small, large).  Its caption
counts them and names each in reading order (top left, top right, bottom left, bottom right):

    "two shapes: large red circle top left, small blue square bottom right."

Nothing in the text before a shape's words tells its kind, colour, size or quadrant: a model
that cannot see the image can learn the grammar and the attributes' frequencies, never which
ones a given image has.  That is what the text-only baseline measures (train/multimodal.py):
the caption loss of a model that reads the image must fall clearly below it.

Pixels are normalised as CLIP's processor does (`CLIPImageProcessor`: rescale by 1/255, then
per-channel mean and std of OpenAI's CLIP), channels first: [3, H, W] float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from lmref.spec.params import uniform01

KINDS = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SIZES = ("small", "large")
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
COUNTS = ("one shape", "two shapes", "three shapes")
BACKGROUND = (235, 235, 235)
# OpenAI CLIP's normalisation (transformers OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    quadrant: int  # index into QUADRANTS

    @property
    def words(self) -> str:
        return f"{self.size} {self.colour} {self.kind} {QUADRANTS[self.quadrant]}"


def scene(seed: int, index: int) -> list[Shape]:
    """The shapes of scene `index`, in reading order of their quadrants."""
    u = uniform01(seed, f"shapes/{index}", 16)
    count = 1 + int(u[0] * 3)
    quadrants = sorted(np.argsort(u[1:5])[:count].tolist())  # `count` distinct quadrants
    return [Shape(KINDS[int(u[5 + 3 * i] * len(KINDS))], list(COLOURS)[int(u[6 + 3 * i] * len(COLOURS))],
                  SIZES[int(u[7 + 3 * i] * len(SIZES))], q) for i, q in enumerate(quadrants)]


def caption(shapes: list[Shape]) -> str:
    """"two shapes: large red circle top left, small blue square bottom right." """
    return f"{COUNTS[len(shapes) - 1]}: {', '.join(s.words for s in shapes)}."


def draw(shapes: list[Shape], image_size: int) -> Image.Image:
    """The scene as an RGB image of image_size x image_size pixels."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    pen = ImageDraw.Draw(image)
    half = image_size / 2
    for s in shapes:
        left, top = (s.quadrant % 2) * half, (s.quadrant // 2) * half
        # the shape's width, centred in its quadrant; at least a pixel (PIL refuses a box whose end precedes its start)
        extent = max(1.0, half * (0.8 if s.size == "large" else 0.45))
        x0, y0 = left + (half - extent) / 2, top + (half - extent) / 2
        box = (x0, y0, x0 + extent - 1, y0 + extent - 1)
        colour = COLOURS[s.colour]
        if s.kind == "circle" and extent >= 2:
            pen.ellipse(box, fill=colour)
        elif s.kind in ("circle", "square"):  # a circle under 2 pixels wide is a dot (PIL's ellipse draws nothing)
            pen.rectangle(box, fill=colour)
        else:
            pen.polygon([(x0 + extent / 2, y0), (x0, y0 + extent - 1), (x0 + extent - 1, y0 + extent - 1)], fill=colour)
    return image


def pixels(image: Image.Image) -> np.ndarray:
    """An RGB image as CLIP's processor feeds it: [3, H, W] float32, rescaled and normalised."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]
    return ((rgb - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)  # [3, H, W]


def examples(seed: int, start: int, count: int, image_size: int) -> tuple[np.ndarray, list[str]]:
    """Scenes start .. start + count - 1: pixels [count, 3, H, W] float32 and their captions."""
    scenes = [scene(seed, i) for i in range(start, start + count)]
    images = np.stack([pixels(draw(shapes, image_size)) for shapes in scenes]) if scenes else \
        np.zeros((0, 3, image_size, image_size), dtype=np.float32)
    return images, [caption(shapes) for shapes in scenes]
