"""Seeded generator of "shapes" scenes: images, exact masks, descriptions and MME-style questions.

A scene is a 90x90 RGB image split into a 3x3 grid of 30-pixel cells. One to four objects
(a colour, a shape and a size) sit in distinct cells with a small jitter, on a light background
that may carry a faint speckle texture. Every object has an exact binary mask (the pixels that
were painted with its colour), and the scene comes with its reference description, in reading
order, and follow-up questions whose answers are known exactly.

The image size and the grid are chosen so that the toy model's 10-pixel patches tile every
cell exactly (3x3 patches per cell, 9x9 = 81 image tokens).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 90
GRID = 3
CELL_SIZE = IMAGE_SIZE // GRID

CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 180),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
RADIUS = {"small": 8, "large": 12}
BACKGROUND = (240, 240, 240)
COUNT_WORDS = ("zero", "one", "two", "three", "four", "five")
ASPECTS = ("position_lookup", "existence", "color", "position", "count")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class ToyObject:
    """One drawn object. ``center`` is (x, y) in pixels; ``radius`` is half the object's extent."""

    shape: str
    color: str
    size: str
    cell: str
    center: tuple[int, int] = (0, 0)
    radius: int = 0

    @property
    def name(self) -> str:
        """The toy's closed-vocabulary object category: colour + shape, e.g. ``"red circle"``."""
        return f"{self.color} {self.shape}"

    @property
    def phrase(self) -> str:
        """How the object is said in a description, e.g. ``"a large red circle at the top left"``."""
        return f"a {self.size} {self.color} {self.shape} at the {self.cell}"


@dataclass
class Question:
    """A follow-up question with its exact answer. The two questions of an MME-style pair share ``pair_id``."""

    text: str
    answer: str
    aspect: str
    pair_id: str


@dataclass
class Scene:
    """A generated scene: image, objects in reading order, one mask per object, description, questions."""

    image: Image.Image
    objects: list[ToyObject]
    masks: np.ndarray
    description: str
    questions: list[Question] = field(default_factory=list)
    index: int = 0
    split: str = "test"


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # a hash of (seed, split, index) so that train and test scenes come from disjoint streams
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"scene index must be >= 0, got {index}")
    digest = hashlib.sha256(f"vlmnb-toy/{seed}/{split}/{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def describe(objects: list[ToyObject]) -> str:
    """The reference description of objects (already in reading order)."""
    return ", ".join(o.phrase for o in objects) + "."


def _count_question(n: int) -> str:
    return f"is there {COUNT_WORDS[n]} object?" if n == 1 else f"are there {COUNT_WORDS[n]} objects?"


def _questions(objects: list[ToyObject], rng: np.random.Generator, index: int) -> list[Question]:
    """Five MME-style pairs (same aspect, opposite answers) about one scene."""
    by_cell = {o.cell: o for o in objects}
    empty = [c for c in CELLS if c not in by_cell]
    out: list[Question] = []

    target = objects[rng.integers(len(objects))]
    free = empty[rng.integers(len(empty))]
    pid = f"{index}-position_lookup"
    out.append(Question(f"what is at the {target.cell}?", f"a {target.size} {target.color} {target.shape}.",
                        "position_lookup", pid))
    out.append(Question(f"what is at the {free}?", "nothing.", "position_lookup", pid))

    # existence: the absent name is a hard negative when one exists (its colour and its shape
    # are both in the scene, just not together)
    names = {o.name for o in objects}
    colors = {o.color for o in objects}
    shapes = {o.shape for o in objects}
    absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in names]
    hard = [n for n in absent if n.split()[0] in colors and n.split()[1] in shapes]
    pool = hard if hard else absent
    negative = pool[rng.integers(len(pool))]
    present = objects[rng.integers(len(objects))].name
    pid = f"{index}-existence"
    out.append(Question(f"is there a {present}?", "yes.", "existence", pid))
    out.append(Question(f"is there a {negative}?", "no.", "existence", pid))

    # colour: the same object asked with its colour and with another colour (another colour
    # present in the scene when possible)
    target = objects[rng.integers(len(objects))]
    # in COLORS' order, never a set's: a set's order changes with PYTHONHASHSEED, and so did the
    # question (the book's chapter 5 asked scenes 9 and 10 different questions run to run)
    others = [c for c in COLORS if c in colors and c != target.color] or [c for c in COLORS if c != target.color]
    wrong = others[rng.integers(len(others))]
    pid = f"{index}-color"
    out.append(Question(f"is the object at the {target.cell} {target.color}?", "yes.", "color", pid))
    out.append(Question(f"is the object at the {target.cell} {wrong}?", "no.", "color", pid))

    target = objects[rng.integers(len(objects))]
    free = empty[rng.integers(len(empty))]
    pid = f"{index}-position"
    out.append(Question(f"is there an object at the {target.cell}?", "yes.", "position", pid))
    out.append(Question(f"is there an object at the {free}?", "no.", "position", pid))

    # count: the wrong count is off by one (a hard negative)
    n = len(objects)
    wrong_n = n + 1 if (n == 1 or (n < 4 and rng.random() < 0.5)) else n - 1
    pid = f"{index}-count"
    out.append(Question(_count_question(n), "yes.", "count", pid))
    out.append(Question(_count_question(wrong_n), "no.", "count", pid))
    return out


def _draw_mask(shape: str, center: tuple[int, int], radius: int) -> np.ndarray:
    mask_img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(mask_img)
    x, y = center
    r = radius
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    elif shape == "square":
        s = round(r * 0.85)  # a square of the same area as the circle looks the same size
        draw.rectangle([x - s, y - s, x + s, y + s], fill=255)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r - 2), (x + r, y + r - 2)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.asarray(mask_img) > 0


def make_scene(index: int, split: str = "test", seed: int = 0) -> Scene:
    """Generate scene ``index`` of ``split`` deterministically.

    The random stream is derived from (seed, split, index), so the same arguments always give the
    same scene and the train and test splits never share a stream.
    """
    rng = _rng(seed, split, index)
    n = int(rng.integers(1, 5))
    cell_ids = sorted(rng.choice(len(CELLS), size=n, replace=False).tolist())
    objects: list[ToyObject] = []
    for cid in cell_ids:
        size = SIZES[rng.integers(len(SIZES))]
        r = RADIUS[size]
        slack = CELL_SIZE // 2 - r - 2
        row, col = divmod(cid, GRID)
        cx = col * CELL_SIZE + CELL_SIZE // 2 + int(rng.integers(-slack, slack + 1))
        cy = row * CELL_SIZE + CELL_SIZE // 2 + int(rng.integers(-slack, slack + 1))
        objects.append(ToyObject(shape=SHAPES[rng.integers(len(SHAPES))],
                                 color=list(COLORS)[rng.integers(len(COLORS))],
                                 size=size, cell=CELLS[cid], center=(cx, cy), radius=r))

    pixels = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    pixels[:] = BACKGROUND
    if rng.random() < 0.5:  # faint distractor texture on the background only
        pixels += rng.integers(-12, 13, size=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.int16)
    masks = np.stack([_draw_mask(o.shape, o.center, o.radius) for o in objects])
    for obj, mask in zip(objects, masks):
        pixels[mask] = COLORS[obj.color]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return Scene(image=image, objects=objects, masks=masks, description=describe(objects),
                 questions=_questions(objects, rng, index), index=index, split=split)


def crowded_cells(objects: list[ToyObject]) -> set[str]:
    """The cells whose object shares its grid row with another object."""
    rows = [CELLS.index(o.cell) // GRID for o in objects]
    return {o.cell for o, r in zip(objects, rows) if rows.count(r) > 1}


def make_scenes(n: int, split: str = "test", seed: int = 0, start: int = 0) -> list[Scene]:
    """Scenes ``start .. start+n-1`` of ``split``."""
    return [make_scene(i, split=split, seed=seed) for i in range(start, start + n)]


_OBJECT_RE = re.compile(
    r"\b(?:(small|large)\s+)?(" + "|".join(COLORS) + r")\s+(" + "|".join(SHAPES) + r")"
    r"(?:\s+at\s+the\s+(" + "|".join(sorted(CELLS, key=len, reverse=True)) + r"))?")


def parse_description(text: str) -> list[ToyObject]:
    """Objects named in a (possibly partial or garbled) description, in the order they appear.

    Anything that reads "[size] colour shape [at the cell]" counts; missing size or cell become
    empty strings, and centre/radius are unknown (0). Junk between phrases is ignored.
    """
    found = []
    for m in _OBJECT_RE.finditer(text.lower()):
        size, color, shape, cell = m.groups()
        found.append(ToyObject(shape=shape, color=color, size=size or "", cell=cell or ""))
    return found


def object_names(text: str) -> list[str]:
    """Closed-vocabulary object names ("red circle", ...) in a description, in order, with repeats."""
    return [o.name for o in parse_description(text)]
