"""The built-in dataset: scenes of coloured shapes, five captions each, and features
computed from the pixels alone, written in the COCO captioning layout.

A scene is a 64 x 64 RGB image holding one to three objects, each with a shape, a colour,
a size and a place in a 3 x 3 grid; captions name them, where they are and how the first
two relate ("there is a small blue square to the right of a large yellow star").

The features come from a fixed extractor that sees only the image: per 8 x 8 cell, a
histogram of gradient orientations, the mean colour and the colour and share of the
pixels that stand out from the background; standardised with statistics of a fixed
calibration set of scenes, then a fixed random projection to 4096 units and a ReLU, so
they are non-negative like VGG-16 fc7 but centred enough for the model to use them.

``builtin_dataset_dir()`` generates the default set once into a cache folder whose name
carries a hash of this generator's source, so a changed generator builds a new set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from captioning.data import layout, pca, vocab, writer
from captioning.data.layout import SPLITS
from captioning.data.vocab import build_vocab, encode_captions
from captioning.data.writer import SplitData, write_coco_folder

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
COLOURS = {
    "red": (0.90, 0.12, 0.10), "green": (0.15, 0.70, 0.20), "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.15), "purple": (0.60, 0.20, 0.80),
    "orange": (1.00, 0.55, 0.05), "white": (0.95, 0.95, 0.95), "cyan": (0.10, 0.85, 0.90),
}
RADIUS = {"small": (5.0, 7.0), "large": (10.0, 12.0)}  # half an object's width, pixels
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
GRID_CENTRES = (11.0, 32.0, 53.0)  # pixel centre of each row / column of the 3 x 3 grid
PLACES = (("at the top left", "at the top", "at the top right"),
          ("on the left", "in the middle", "on the right"),
          ("at the bottom left", "at the bottom", "at the bottom right"))
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
CAPTIONS_PER_IMAGE = 5
FEATURE_DIM = 4096
DEFAULT_TRAIN, DEFAULT_VAL = 8000, 1000
CACHE_ENV_VAR = "CAPTION_CACHE"
STAMP_FILE = "shapes.json"
_CELL = 8  # pixels per side of a descriptor cell
_ORIENTATIONS = 9
_EXTRACTOR_SEED = 20261126  # fixes the calibration scenes and the projection, not the data
_BACKGROUND = 0.12


@dataclass
class Shape:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    x: float  # centre, pixels
    y: float
    radius: float


# ---------------------------------------------------------------- scenes and pixels

def random_scene(rng: np.random.Generator) -> list[Shape]:
    """One to three non-overlapping objects in distinct grid cells, ordered large first,
    then top to bottom and left to right (the order the captions name them in)."""
    count = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    objects: list[Shape] = []
    for cell in rng.choice(9, count, replace=False):
        row, col = divmod(int(cell), 3)
        for _ in range(20):
            size = str(rng.choice(list(RADIUS)))
            radius = float(rng.uniform(*RADIUS[size]))
            lo, hi = radius + 1, IMAGE_SIZE - radius - 1
            x = float(np.clip(GRID_CENTRES[col] + rng.uniform(-4, 4), lo, hi))
            y = float(np.clip(GRID_CENTRES[row] + rng.uniform(-4, 4), lo, hi))
            if all(np.hypot(x - o.x, y - o.y) >= radius + o.radius + 2 for o in objects):
                objects.append(Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))),
                                     size, row, col, x, y, radius))
                break
    return sorted(objects, key=lambda o: (o.size != "large", o.row, o.col))


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(ax, ay) <= 0.85 * r
    if shape == "diamond":
        return ax + ay <= 1.15 * r
    if shape == "triangle":  # apex up
        return (dy >= -r) & (dy <= 0.75 * r) & (ax <= 0.6 * (dy + r))
    if shape == "cross":
        return ((ax <= 0.33 * r) & (ay <= r)) | ((ay <= 0.33 * r) & (ax <= r))
    if shape == "star":  # five points, one up
        angle = np.arctan2(dx, -dy)
        return np.hypot(dx, dy) <= r * (0.55 + 0.45 * np.cos(5 * angle))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5


def render(scene: list[Shape], rng: np.random.Generator) -> np.ndarray:
    """(64, 64, 3) float32 in [0, 1]: a dark, slightly noisy background and the objects."""
    image = _BACKGROUND + 0.02 * rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE, 3),
                                                     dtype=np.float32)
    for o in scene:
        window = (slice(max(int(o.y - o.radius) - 1, 0), int(o.y + o.radius) + 2),
                  slice(max(int(o.x - o.radius) - 1, 0), int(o.x + o.radius) + 2))
        mask = _mask(o.shape, _XX[window] - o.x, _YY[window] - o.y, o.radius)
        colour = np.asarray(COLOURS[o.colour]) + rng.uniform(-0.04, 0.04, 3)
        image[window][mask] = colour
    return np.clip(image, 0, 1, out=image)


# ---------------------------------------------------------------- captions

def _phrase(o: Shape, rng: np.random.Generator, with_size: bool = True) -> str:
    words = f"{rng.choice(SIZE_WORDS[o.size])} {o.colour}" if with_size else o.colour
    return f"{'an' if words[0] in 'aeiou' else 'a'} {words} {o.shape}"


def _relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is seen from ``b``, along the axis on which they are further apart."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _templates(scene: list[Shape], rng: np.random.Generator) -> list[str]:
    a = scene[0]
    place = PLACES[a.row][a.col]
    if len(scene) == 1:
        return [
            f"{_phrase(a, rng)} {place}",
            f"there is {_phrase(a, rng)} {place}",
            f"{_phrase(a, rng, False)} {place}",
            f"a picture of {_phrase(a, rng)}",
            f"{place} there is {_phrase(a, rng)}",
            f"{_phrase(a, rng)} on a dark background",
            f"a single {rng.choice(SIZE_WORDS[a.size])} {a.colour} {a.shape} {place}",
        ]
    b, rest = scene[1], scene[1:]
    others = len(rest)
    return [
        f"{_phrase(a, rng)} {_relation(a, b)} {_phrase(b, rng)}",
        f"there is {_phrase(a, rng)} {_relation(a, b)} {_phrase(b, rng)}",
        " and ".join(_phrase(o, rng, False) for o in scene),
        f"{COUNT_WORDS[len(scene)]} shapes including {_phrase(a, rng)}",
        f"{_phrase(a, rng)} {place} and {_phrase(b, rng, False)}",
        f"{_phrase(b, rng, False)} {_relation(b, a)} {_phrase(a, rng, False)}",
        f"{_phrase(a, rng)} and {COUNT_WORDS[others]} other shape{'s' if others > 1 else ''}",
    ]


def describe(scene: list[Shape], rng: np.random.Generator,
             count: int = CAPTIONS_PER_IMAGE) -> list[list[str]]:
    """``count`` captions (token lists) from distinct templates, at most 15 words each."""
    templates = _templates(scene, rng)
    return [templates[i].split() for i in rng.choice(len(templates), count, replace=False)]


# ---------------------------------------------------------------- features from pixels

def _descriptors(images: np.ndarray) -> np.ndarray:
    """(n, 64, 64, 3) -> (n, 64 cells * 16) float32: per 8 x 8 cell, a 9-bin histogram of
    gradient orientation (strongest channel, square-rooted), mean colour, share of pixels
    that differ from the image's median colour, and their mean colour."""
    n = len(images)
    gx = np.zeros_like(images)
    gy = np.zeros_like(images)
    gx[:, :, 1:-1] = images[:, :, 2:] - images[:, :, :-2]
    gy[:, 1:-1] = images[:, 2:] - images[:, :-2]
    strength = gx**2 + gy**2
    channel = strength.argmax(axis=-1)[..., None]
    gx = np.take_along_axis(gx, channel, -1)[..., 0]
    gy = np.take_along_axis(gy, channel, -1)[..., 0]
    magnitude = np.sqrt(np.take_along_axis(strength, channel, -1)[..., 0])
    orientation = np.minimum((np.arctan2(gy, gx) % np.pi) / np.pi * _ORIENTATIONS,
                             _ORIENTATIONS - 1).astype(np.intp)
    cells = IMAGE_SIZE // _CELL
    cell_of_pixel = (np.arange(IMAGE_SIZE)[:, None] // _CELL * cells
                     + np.arange(IMAGE_SIZE)[None, :] // _CELL)
    bins = ((np.arange(n)[:, None, None] * cells**2 + cell_of_pixel) * _ORIENTATIONS
            + orientation)
    hog = np.bincount(bins.ravel(), magnitude.ravel(), n * cells**2 * _ORIENTATIONS)
    hog = hog.reshape(n, cells, cells, _ORIENTATIONS).astype(np.float32) / _CELL**2
    # The background is the median colour of a sparse grid of pixels (most are background).
    background = np.median(images[:, ::4, ::4].reshape(n, -1, 3), axis=1)[:, None, None, :]
    foreground = (np.abs(images - background).max(axis=-1) > 0.2).astype(np.float32)[..., None]
    per_pixel = np.concatenate([images, foreground, images * foreground], axis=-1)
    pooled = per_pixel.reshape(n, cells, _CELL, cells, _CELL, -1).mean(axis=(2, 4))
    colour, share, fg_colour = np.split(pooled, [3, 4], axis=-1)
    fg_colour = fg_colour / np.maximum(share, 1e-3)
    return np.concatenate([np.sqrt(hog), colour, share, fg_colour], axis=-1).reshape(n, -1)


class FeatureExtractor:
    """Pixels -> (n, 4096) non-negative float32, the same for every dataset and seed."""

    def __init__(self, calibration_images: int = 512) -> None:
        rng = np.random.default_rng(_EXTRACTOR_SEED)
        images = np.stack([render(random_scene(rng), rng) for _ in range(calibration_images)])
        descriptors = _descriptors(images)
        self.mean = descriptors.mean(axis=0)
        self.scale = 1.0 / np.maximum(descriptors.std(axis=0), 1e-2)
        d = descriptors.shape[1]
        self.projection = (rng.standard_normal((d, FEATURE_DIM)) / np.sqrt(d)).astype(np.float32)
        self.bias = (0.5 * rng.standard_normal(FEATURE_DIM)).astype(np.float32)

    def __call__(self, images: np.ndarray, chunk: int = 500, progress: bool = False,
                 desc: str = "features") -> np.ndarray:
        out = np.empty((len(images), FEATURE_DIM), np.float32)
        for start in tqdm(range(0, len(images), chunk), desc=desc, disable=not progress,
                          leave=False, file=sys.stderr):
            d = (_descriptors(images[start : start + chunk]) - self.mean) * self.scale
            out[start : start + chunk] = np.maximum(d @ self.projection + self.bias, 0)
        return out


# ---------------------------------------------------------------- the dataset on disk

def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(path, compress_level=1)


def write_shapes_dataset(out: str | os.PathLike, train: int = DEFAULT_TRAIN,
                         val: int = DEFAULT_VAL, seed: int = 0, progress: bool = False) -> Path:
    """Generate ``train`` + ``val`` scenes into ``out`` in the COCO captioning layout,
    with the PNG images under ``images/<split>/`` (the URLs are those relative paths)
    and ``shapes.json`` recording how it was made, written last."""
    for name, value in (("train", train), ("val", val)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive number of images, got {value!r}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    extractor = FeatureExtractor()
    tokens, images, scenes = {}, {}, {}
    for split, count in (("train", train), ("val", val)):
        scenes[split] = [random_scene(rng) for _ in range(count)]
        images[split] = np.stack([render(s, rng) for s in tqdm(
            scenes[split], desc=f"{split} scenes", disable=not progress, leave=False,
            file=sys.stderr)])
        tokens[split] = [describe(s, rng) for s in scenes[split]]
    idx_to_word = build_vocab(c for caps in tokens["train"] for c in caps)
    word_to_idx = {w: i for i, w in enumerate(idx_to_word)}
    splits = {}
    for split in SPLITS:
        flat = [c for caps in tokens[split] for c in caps]
        captions, _ = encode_captions(flat, word_to_idx, max_length=15)
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        urls = [f"images/{split}/{i:05d}.png" for i in range(len(images[split]))]
        with ThreadPoolExecutor(2) as pool:  # PNG compression releases the GIL
            jobs = pool.map(_save_png, [out / u for u in urls], images[split])
            for _ in tqdm(jobs, total=len(urls), disable=not progress,
                          desc=f"{split} images", leave=False, file=sys.stderr):
                pass
        splits[split] = SplitData(
            captions, np.repeat(np.arange(len(images[split]), dtype=np.int32),
                                CAPTIONS_PER_IMAGE),
            extractor(images[split], progress=progress, desc=f"{split} features"), urls)
    write_coco_folder(out, idx_to_word, splits, pca_dim=512)
    (out / STAMP_FILE).write_text(json.dumps(
        {"generator": generator_stamp(), "train": train, "val": val, "seed": seed}))
    return out


def generator_stamp() -> str:
    """A hash of the code that makes the dataset: any change to it gives a new stamp."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], layout, vocab, writer, pca):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    """$CAPTION_CACHE, else $XDG_CACHE_HOME/captioning, else ~/.cache/captioning."""
    if os.environ.get(CACHE_ENV_VAR):
        return Path(os.environ[CACHE_ENV_VAR])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "captioning"


def builtin_dataset_dir(train: int | None = None, val: int | None = None,
                        seed: int = 0) -> Path:
    """The folder of the built-in dataset (DEFAULT_TRAIN + DEFAULT_VAL images unless
    told otherwise), generated on first use (about 25 s) into the cache and reused
    after; built in a temporary folder and renamed into place."""
    train = DEFAULT_TRAIN if train is None else train
    val = DEFAULT_VAL if val is None else val
    root = cache_root()
    folder = root / f"shapes-{generator_stamp()}-{train}-{val}-{seed}"
    if (folder / STAMP_FILE).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    print(f"building the built-in shapes dataset ({train} + {val} images) in {folder} "
          "(once)", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        write_shapes_dataset(tmp, train, val, seed, progress=sys.stderr.isatty())
        try:
            os.rename(tmp, folder)
        except OSError:  # built meanwhile by another process, or a broken leftover
            if not (folder / STAMP_FILE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
