"""The procedural world of the default model: coloured shapes on plain backgrounds, with captions.

Used to train `flowrun-tiny` (tools/train_default_model.py) and to judge what it draws
(tools/evaluate_default_model.py): `classify` reads background, shape colour and shape back from pixels.
Everything is deterministic from a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 40)}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
SHAPES = ("circle", "square", "triangle")
SIZE = 64
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    cx: float
    cy: float
    radius: float

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def random_scene(rng: np.random.Generator) -> Scene:
    radius = float(rng.uniform(11, 22))
    margin = radius + 2
    return Scene(SHAPES[rng.integers(len(SHAPES))], list(COLOURS)[rng.integers(len(COLOURS))],
                 list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], float(rng.uniform(margin, SIZE - margin)),
                 float(rng.uniform(margin, SIZE - margin)), radius)


def render(scene: Scene) -> np.ndarray:
    """SIZE x SIZE x 3 uint8, anti-aliased by drawing at 4x and downsampling."""
    from PIL import Image, ImageDraw

    s = SUPERSAMPLE
    img = Image.new("RGB", (SIZE * s, SIZE * s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cx, cy, r, fill = scene.cx * s, scene.cy * s, scene.radius * s, COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        h = r * 0.85  # about the circle's area
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        h = r * 1.15
        draw.polygon([(cx, cy - h), (cx - h * 0.95, cy + h * 0.75), (cx + h * 0.95, cy + h * 0.75)], fill=fill)
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX))


def batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[Scene]]:
    scenes = [random_scene(rng) for _ in range(n)]
    return np.stack([render(s) for s in scenes]), scenes


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None
    shape: str | None


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    names = list(table)
    dists = [float(np.sum((rgb - np.asarray(table[n], dtype=np.float64)) ** 2)) for n in names]
    return names[int(np.argmin(dists))]


def classify(image: np.ndarray) -> Reading:
    """Background from the border, shape colour from the pixels far from it, shape from how the figure fills
    its bounding box (circle ~0.79, square ~1, triangle ~0.5) and where its mass sits."""
    img = image.astype(np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    background = _nearest(np.median(border, axis=0), BACKGROUNDS)
    bg = np.asarray(BACKGROUNDS[background], dtype=np.float64)
    distance = np.sqrt(((img - bg) ** 2).sum(-1))
    mask = distance > 90
    if mask.sum() < 20:
        return Reading(background, None, None)
    colour = _nearest(np.median(img[mask], axis=0), COLOURS)
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = mask.sum() / (h * w)
    top_heavy = (ys < ys.min() + h / 2).sum() / mask.sum()
    if fill > 0.9:
        shape = "square"
    elif fill < 0.62 and top_heavy < 0.42:
        shape = "triangle"
    elif 0.66 <= fill <= 0.9 and 0.75 < h / w < 1.33:
        shape = "circle"
    else:
        shape = None  # a blob that is none of the three
    return Reading(background, colour, shape)
