"""Image sources for the chapters: toy scenes, a folder of images, the paper's COCO images, MME.

Every source gives a list of :class:`Sample`::

    samples = vlmnb.data.images("toy", n=8)           # the embedded default (synthetic scenes)
    samples = vlmnb.data.images("coco")               # the paper's 81 COCO images, with masks
    samples = vlmnb.data.images("~/photos")           # every readable image in a folder
    samples = vlmnb.data.images(["a.jpg", "b.png"])   # given files
    questions = vlmnb.data.load_mme("path/to/MME")    # the MME benchmark as a DataFrame

COCO images are never bundled: each id of the paper is resolved through the official
annotation files (its ``coco_url``), downloaded once into a local cache, checked against a
sha256 manifest on every reuse, and re-downloaded when the check fails. Run this once on a
machine with network access (it also caches the few annotations the chapters need, so later
runs need neither the network nor the big annotation files)::

    python -m vlmnb data coco --annotations DIR

Caches live in the work tree, never in the home folder: ``$VLMNB_CACHE_DIR`` if set, else
``<work tree>/.cache/vlmnb`` where the work tree is the nearest folder above the current one
holding ``.git`` or ``pyproject.toml``.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "Sample", "Lazy", "images", "default_cache_dir",
    "coco_ids", "CocoImage", "CocoResolver", "download_coco", "coco_samples",
    "COCO_CATEGORIES", "COCO_SYNONYMS", "category_synonyms", "match_category",
    "load_mme", "mme_samples", "EncodedImage", "MME_PERCEPTION", "MME_COGNITION", "MME_HUB_ID",
    "cli_data",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_TOY_N = 16
SOURCES_HELP = ("'toy' (synthetic scenes, the default), 'coco' (the paper's 81 COCO images), "
                "'mme' (the MME benchmark), a folder of images, an image file, or a list of image paths")


# ============================================================================ samples
class Lazy:
    """A value computed on first use: ``Sample(image=Lazy(lambda: Image.open(p)))``."""

    __slots__ = ("load",)

    def __init__(self, load: Callable[[], Any]):
        self.load = load


class _LazyField:
    # dataclass field whose stored value may be a Lazy, resolved (once) when read
    def __set_name__(self, owner, name):
        self.slot = f"_{name}_value"

    def __get__(self, obj, owner=None):
        if obj is None:
            return None  # the dataclass default
        value = obj.__dict__.get(self.slot)
        if isinstance(value, Lazy):
            value = value.load()
            obj.__dict__[self.slot] = value
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


@dataclass(repr=False, eq=False)
class Sample:
    """One image with what is known about it.

    Attributes:
        image_id: identifier, unique within its source (e.g. ``"480122"`` for COCO).
        image: the image as PIL RGB (``image`` and ``masks`` may be given as :class:`Lazy`
            values; they are then loaded on first access and kept).
        masks: object name -> instance masks (bool arrays of the image's height x width), for
            localisation; ``None`` where the source has no masks (a user's folder).
        objects: ground-truth object names, or ``None`` when unknown.
        meta: anything else the source knows (file path, COCO url, toy description, ...).
    """

    image_id: str
    image: Any = _LazyField()
    masks: Any = _LazyField()
    objects: list[str] | None = None
    meta: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        n_obj = "?" if self.objects is None else len(self.objects)
        return f"Sample(image_id={self.image_id!r}, objects={n_obj}, meta keys={sorted(self.meta)})"


def default_cache_dir() -> Path:
    """Where downloads are cached: ``$VLMNB_CACHE_DIR``, else ``<work tree>/.cache/vlmnb``."""
    env = os.environ.get("VLMNB_CACHE_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / ".git").exists() or (d / "pyproject.toml").exists():
            return d / ".cache" / "vlmnb"
    return here / ".cache" / "vlmnb"


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def images(source: Any = "toy", n: int | None = None, seed: int = 0, **kw) -> list[Sample]:
    """Samples from ``source``: see the module docstring for the sources.

    Args:
        source: ``"toy"``, ``"coco"``, ``"mme"``, a folder, an image file or a list of paths.
        n: how many (the first ``n``; ``None``: all, or 16 toy scenes).
        seed: the toy scenes' seed (other sources are fixed lists and ignore it).
        **kw: passed to the source: ``split`` (toy); ``cache_dir``, ``annotations_dir``,
            ``base_url``, ``ids`` (coco); ``path``, ``categories`` (mme).
    """
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    if isinstance(source, str) and source in ("toy", "coco", "mme"):
        if source == "toy":
            return toy_samples(DEFAULT_TOY_N if n is None else n, seed=seed, **kw)
        if source == "coco":
            return coco_samples(n=n, **kw)
        return mme_samples(load_mme(kw.pop("path", None), **kw), n=n)
    if kw:
        raise TypeError(f"unexpected options {sorted(kw)} for an image source of files")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            return _file_samples(_folder_images(path), n)
        if path.is_file():
            return _file_samples([path], n)
        raise ValueError(f"unknown image source {str(source)!r} (no such file or folder); use {SOURCES_HELP}")
    if isinstance(source, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in source):
        paths = [Path(p).expanduser() for p in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
        return _file_samples(paths, n)
    raise ValueError(f"unknown image source {source!r}; use {SOURCES_HELP}")


# ============================================================================ toy
def toy_samples(n: int = DEFAULT_TOY_N, seed: int = 0, split: str = "test") -> list[Sample]:
    """The toy model's synthetic scenes (exact masks, objects and description)."""
    from vlmnb.toy.scenes import make_scenes

    out = []
    for scene in make_scenes(n, split=split, seed=seed):
        masks: dict[str, list[np.ndarray]] = {}
        for obj, mask in zip(scene.objects, scene.masks):
            masks.setdefault(obj.name, []).append(np.asarray(mask, dtype=bool))
        out.append(Sample(
            image_id=f"toy-{split}-s{seed}-{scene.index:04d}", image=scene.image, masks=masks,
            objects=[o.name for o in scene.objects],
            meta={"source": "toy", "description": scene.description, "index": scene.index,
                  "split": split, "seed": seed, "scene": scene}))
    return out


# ============================================================================ files
def _folder_images(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    return paths


def _check_readable(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        return size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}; remove it or convert it to PNG/JPEG") from None


def _file_samples(paths: Sequence[Path], n: int | None) -> list[Sample]:
    paths = list(paths)[: n if n is not None else None]
    stems = Counter(p.stem for p in paths)
    out = []
    for p in paths:
        width, height = _check_readable(p)
        out.append(Sample(
            image_id=p.stem if stems[p.stem] == 1 else p.name,
            image=Lazy(lambda p=p: _open_rgb(p)), masks=None, objects=None,
            meta={"source": "file", "path": str(p), "width": width, "height": height}))
    return out


# ============================================================================ COCO
ANNOTATION_FILES = ("instances_val2017.json", "instances_train2017.json",
                    "instances_val2014.json", "instances_train2014.json")
ANNOTATION_ZIPS = ("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                   "http://images.cocodataset.org/annotations/annotations_trainval2014.zip")
SUBSET_FILE = "instances_subset.json"
MANIFEST_FILE = "manifest.json"

#: the 80 COCO object categories
COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

#: words a description may use for a COCO category (singular; plurals are handled)
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "child", "kid", "people", "guy", "lady", "gentleman",
               "player", "skier", "surfer", "skateboarder", "snowboarder", "rider", "cyclist",
               "biker", "baby", "toddler", "adult", "pedestrian", "spectator", "teenager",
               "athlete", "batter", "catcher", "pitcher", "umpire", "chef", "cook", "worker",
               "officer", "policeman", "soldier", "human", "individual", "crowd", "couple", "family"),
    "bicycle": ("bike", "cycle"),
    "motorcycle": ("motorbike", "moped", "dirt bike"),
    "airplane": ("plane", "aeroplane", "aircraft", "jet", "airliner"),
    "car": ("automobile", "taxi", "cab", "sedan", "vehicle", "van", "suv"),
    "bus": ("double decker", "coach"),
    "train": ("locomotive", "tram", "streetcar", "railcar"),
    "truck": ("lorry", "pickup", "pickup truck", "fire truck"),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry", "raft"),
    "traffic light": ("stoplight", "traffic signal", "signal light"),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": ("meter",),
    "bird": ("pigeon", "seagull", "gull", "duck", "goose", "parrot", "swan", "sparrow"),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup"),
    "horse": ("pony", "foal"),
    "sheep": ("lamb",),
    "cow": ("cattle", "bull", "calf", "ox"),
    "backpack": ("rucksack", "knapsack"),
    "umbrella": ("parasol",),
    "handbag": ("purse", "bag", "hand bag"),
    "tie": ("necktie",),
    "suitcase": ("luggage", "suit case"),
    "frisbee": ("flying disc",),
    "skis": ("ski",),
    "sports ball": ("ball", "football", "soccer ball", "basketball", "tennis ball", "baseball", "volleyball"),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet"),
    "wine glass": ("wineglass",),
    "cup": ("mug", "teacup"),
    "sandwich": ("burger", "hamburger", "sub"),
    "hot dog": ("hotdog",),
    "donut": ("doughnut",),
    "cake": ("cupcake",),
    "chair": ("stool", "armchair"),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant", "flower pot", "flowerpot"),
    "dining table": ("table",),
    "tv": ("television", "monitor", "tv screen"),
    "laptop": ("notebook computer", "computer"),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "controller"),
    "cell phone": ("phone", "cellphone", "smartphone", "mobile phone"),
    "oven": ("stove",),
    "refrigerator": ("fridge",),
    "teddy bear": ("teddy", "stuffed animal", "stuffed bear", "plush"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("tooth brush",),
}


def coco_ids() -> list[int]:
    """The paper's 81 COCO image ids, in the paper's order (package data ``data/coco_ids.txt``)."""
    text = resources.files("vlmnb.data").joinpath("coco_ids.txt").read_text()
    return [int(tok) for line in text.splitlines() if not line.lstrip().startswith("#")
            for tok in line.split()]


# plurals that the regular rules below get wrong
_IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "person": "people",
                      "gentleman": "gentlemen", "policeman": "policemen", "mouse": "mice",
                      "knife": "knives", "calf": "calves", "ox": "oxen", "goose": "geese",
                      "sheep": "sheep", "people": "people", "cattle": "cattle", "skis": "skis",
                      "scissors": "scissors", "luggage": "luggage", "crowd": "crowds"}


def _plural(phrase: str) -> str:
    """Plural of a noun phrase (its last word), by English spelling rules plus exceptions."""
    *head, last = phrase.split()
    if last in _IRREGULAR_PLURALS:
        plural = _IRREGULAR_PLURALS[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        plural = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        plural = last[:-1] + "ies"
    else:
        plural = last + "s"
    return " ".join([*head, plural])


def _norm_words(text: str) -> str:
    text = re.sub(r"[^a-z0-9 ]+", " ", text.lower().replace("-", " "))
    return " ".join(w for w in text.split() if w not in ("a", "an", "the", "some", "two", "three"))


def category_synonyms(category: str) -> frozenset[str]:
    """The words and phrases :func:`match_category` maps to ``category`` (singular; plurals match too)."""
    if category not in COCO_CATEGORIES:
        raise ValueError(f"{category!r} is not a COCO category; see vlmnb.data.COCO_CATEGORIES")
    return frozenset({category, *COCO_SYNONYMS.get(category, ())})


_SYNONYM_INDEX: dict[str, str] | None = None


def _synonym_index() -> dict[str, str]:
    global _SYNONYM_INDEX
    if _SYNONYM_INDEX is None:
        index = {}
        for cat in COCO_CATEGORIES:
            for word in category_synonyms(cat):
                word = _norm_words(word)
                index.setdefault(_plural(word), cat)
                index.setdefault(word + "s", cat)  # "persons", and plain-s plurals of exceptions
                index[word] = cat
        _SYNONYM_INDEX = index
    return _SYNONYM_INDEX


def match_category(phrase: str, categories: Iterable[str] | None = None) -> str | None:
    """The COCO category a detail word or phrase names, or ``None``.

    ``"man"`` -> ``"person"``, ``"bikes"`` -> ``"bicycle"``, ``"a red double-decker bus"`` ->
    ``"bus"``. The longest ending of the phrase (three words, then two, then one) that is a
    category or one of its synonyms, in the singular or the plural, wins, so ``"teddy bear"``
    is not ``"bear"``. With ``categories``, only those are candidates (e.g. the image's own).
    """
    allowed = set(COCO_CATEGORIES if categories is None else categories)
    index = _synonym_index()
    words = _norm_words(phrase).split()
    for size in (3, 2, 1):
        if len(words) < size:
            continue
        cat = index.get(" ".join(words[-size:]))
        if cat is not None and cat in allowed:
            return cat
    return None


@dataclass(frozen=True)
class CocoImage:
    """Where one COCO image lives, from the annotation file that lists it."""

    id: int
    file_name: str
    coco_url: str
    width: int
    height: int
    source: str  # the annotation file it was found in


def _annotation_help(where: Path | None) -> str:
    d = str(where) if where is not None else "DIR"
    return (f"Get the official annotation files once (about 250 MB each) and unzip them:\n"
            f"  wget {ANNOTATION_ZIPS[0]}\n"
            f"  wget {ANNOTATION_ZIPS[1]}   # optional: for ids the 2017 files do not list\n"
            f"  unzip annotations_trainval2017.zip -d {d}   (and the 2014 zip likewise)\n"
            f"then run:  python -m vlmnb data coco --annotations {d}")


class CocoResolver:
    """Maps COCO image ids to file names, ``coco_url`` and instance annotations.

    Reads the official annotation files (``instances_val2017.json``, ``instances_train2017.json``,
    ``instances_val2014.json``, ``instances_train2014.json``, then any other ``instances_*.json``
    or ``image_info_*.json``) found in ``annotations_dir`` or its ``annotations/`` subfolder, in
    that order, stopping once every wanted id is found. Only the wanted ids' entries are kept, so
    :meth:`subset` is a small file in the official format that can stand in for the big ones.
    (Reading ``instances_train2017.json`` takes a few GB of memory for a moment; it happens
    once, after which :func:`download_coco` works from the cached subset.)

    Args:
        annotations_dir: folder with the annotation JSON files.
        ids: the ids to look for (default: the paper's 81).
        files: explicit annotation files instead of a folder.
    """

    def __init__(self, annotations_dir: str | os.PathLike | None = None,
                 ids: Iterable[int] | None = None, files: Sequence[str | os.PathLike] | None = None):
        self.annotations_dir = Path(annotations_dir) if annotations_dir is not None else None
        if files is not None:
            self.files = [Path(f) for f in files]
            missing = [str(f) for f in self.files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"COCO annotation file(s) not found: {', '.join(missing)}")
        else:
            self.files = self._find_files()
        self.wanted = {int(i) for i in (coco_ids() if ids is None else ids)}
        self._images: dict[int, CocoImage] = {}
        self._annotations: dict[int, list[dict]] = {}
        self._categories: dict[int, dict] = {}
        self._scanned: list[Path] = []
        self._coco = None

    def _find_files(self) -> list[Path]:
        d = self.annotations_dir
        if d is None or not d.is_dir():
            raise FileNotFoundError(f"COCO annotation folder {d} does not exist.\n" + _annotation_help(d))
        found: list[Path] = []
        for folder in (d, d / "annotations"):
            if folder.is_dir():
                found += [p for p in folder.iterdir() if p.is_file() and p.suffix == ".json"
                          and (p.name.startswith("instances_") or p.name.startswith("image_info_"))]
        if not found:
            raise FileNotFoundError(f"no COCO annotation files (instances_*.json) in {d} or {d / 'annotations'}.\n"
                                    + _annotation_help(d))
        rank = {name: i for i, name in enumerate(ANNOTATION_FILES)}
        return sorted(found, key=lambda p: (rank.get(p.name, len(rank)), p.name, str(p)))

    def _scan(self) -> None:
        for path in self.files:
            if self.wanted <= set(self._images):
                return
            if path in self._scanned:
                continue
            with open(path, "rb") as f:
                data = json.load(f)
            self._scanned.append(path)
            for cat in data.get("categories", []):
                self._categories.setdefault(int(cat["id"]), cat)
            new = set()
            for img in data.get("images", []):
                iid = int(img["id"])
                if iid in self.wanted and iid not in self._images:
                    self._images[iid] = CocoImage(iid, img["file_name"], img["coco_url"],
                                                  int(img["width"]), int(img["height"]),
                                                  img.get("vlmnb_source", path.name))
                    self._annotations[iid] = []
                    new.add(iid)
            for ann in data.get("annotations", []):
                if int(ann["image_id"]) in new:
                    self._annotations[int(ann["image_id"])].append(ann)
            del data
            self._coco = None

    def resolve(self, ids: Iterable[int] | None = None) -> dict[int, CocoImage]:
        """``id -> CocoImage`` for ``ids`` (default: all wanted); unknown ids raise LookupError."""
        ids = sorted(self.wanted) if ids is None else [int(i) for i in ids]
        extra = set(ids) - self.wanted
        if extra:
            self.wanted |= extra
            self._scanned = []  # scan again for the new ids
        self._scan()
        missing = [i for i in ids if i not in self._images]
        if missing:
            raise LookupError(f"COCO id(s) {missing} are in none of the annotation files "
                           f"{[p.name for p in self.files]}; add the file that lists them "
                           f"(2014 and 2017 train/val annotations cover every image)")
        return {i: self._images[i] for i in ids}

    @property
    def categories(self) -> dict[int, str]:
        """Category id -> name."""
        self._scan()
        return {cid: cat["name"] for cid, cat in sorted(self._categories.items())}

    def annotations(self, image_id: int) -> list[dict]:
        """The instance annotations of one image (official dicts)."""
        self.resolve([image_id])
        return self._annotations[int(image_id)]

    def objects(self, image_id: int) -> list[str]:
        """Sorted names of the categories annotated in the image."""
        names = self.categories
        return sorted({names[int(a["category_id"])] for a in self.annotations(image_id)})

    def subset(self, ids: Iterable[int] | None = None) -> dict:
        """The wanted images' entries as one annotation dict in the official format."""
        found = self.resolve(ids)
        return {
            "info": {"description": "subset of the COCO annotations used by vlmnb",
                     "sources": sorted({img.source for img in found.values()})},
            "images": [{"id": i.id, "file_name": i.file_name, "coco_url": i.coco_url,
                        "width": i.width, "height": i.height, "vlmnb_source": i.source}
                       for i in found.values()],
            "annotations": [a for i in found for a in self._annotations[i]],
            "categories": [self._categories[c] for c in sorted(self._categories)],
        }

    def masks(self, image_id: int) -> dict[str, list[np.ndarray]]:
        """Category name -> instance masks (bool, height x width), decoded with pycocotools."""
        anns = self.annotations(image_id)
        coco = self._pycoco()
        names = self.categories
        out: dict[str, list[np.ndarray]] = {}
        for ann in anns:
            out.setdefault(names[int(ann["category_id"])], []).append(coco.annToMask(ann).astype(bool))
        return out

    def _pycoco(self):
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()  # built from the kept entries, not from a file
            coco.dataset = {
                "images": [{"id": i.id, "width": i.width, "height": i.height, "file_name": i.file_name}
                           for i in self._images.values()],
                "annotations": [a for anns in self._annotations.values() for a in anns],
                "categories": list(self._categories.values()),
            }
            _quiet(coco.createIndex)
            self._coco = coco
        return self._coco


def _quiet(fn: Callable) -> Any:
    # pycocotools prints progress lines; keep notebooks clean
    import contextlib

    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _image_url(coco_url: str, base_url: str | None) -> str:
    if not base_url:
        return coco_url
    return base_url.rstrip("/") + "/" + urllib.parse.urlparse(coco_url).path.lstrip("/")


def _coco_cache(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "coco"


def _default_annotations_dir(cache: Path) -> Path:
    env = os.environ.get("VLMNB_COCO_ANNOTATIONS")
    return Path(env) if env else cache / "annotations"


def _subset_resolver(cache: Path, annotations_dir: str | os.PathLike | None,
                     ids: list[int]) -> CocoResolver:
    """A resolver over the cached subset when it covers ``ids``, else over the big files
    (and the subset is then rewritten to cover ``ids``)."""
    subset_path = cache / SUBSET_FILE
    if subset_path.is_file():
        cached = CocoResolver(files=[subset_path], ids=ids)
        try:
            cached.resolve(ids)
            return cached
        except LookupError:
            pass
    ann_dir = Path(annotations_dir) if annotations_dir is not None else _default_annotations_dir(cache)
    resolver = CocoResolver(ann_dir, ids=set(ids) | _cached_subset_ids(subset_path))
    cache.mkdir(parents=True, exist_ok=True)
    _atomic_json(subset_path, resolver.subset())
    return CocoResolver(files=[subset_path], ids=ids)


def _cached_subset_ids(subset_path: Path) -> set[int]:
    if not subset_path.is_file():
        return set()
    return {int(img["id"]) for img in json.loads(subset_path.read_text()).get("images", [])}


class _DownloadError(ConnectionError):
    pass


def _fetch(url: str, dest: Path, timeout: float) -> tuple[str, int]:
    """Download ``url`` to ``dest`` atomically; returns (sha256, size)."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    h, size = hashlib.sha256(), 0
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "vlmnb"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as f:
            while block := response.read(1 << 16):
                f.write(block)
                h.update(block)
                size += len(block)
        try:
            with Image.open(tmp) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise _DownloadError(f"the server sent {size} bytes that are not an image ({exc})") from None
        os.replace(tmp, dest)
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise _DownloadError(str(reason)) from None
    return h.hexdigest(), size


def download_coco(ids: Iterable[int] | None = None, cache_dir: str | os.PathLike | None = None,
                  annotations_dir: str | os.PathLike | None = None, base_url: str | None = None,
                  timeout: float = 60.0, progress: bool = True) -> dict[int, Path]:
    """Make sure the COCO images ``ids`` (default: the paper's 81) are in the local cache.

    Each image is downloaded once into ``cache_dir/images/`` (temporary file, then renamed),
    and its sha256 is recorded in ``cache_dir/manifest.json``. On later calls every cached
    file is hashed again and re-downloaded if it no longer matches. URLs come from the
    annotation files (see :class:`CocoResolver`), whose entries for these ids are cached in
    ``cache_dir/instances_subset.json``, so the big files are needed only the first time.

    Args:
        cache_dir: the COCO cache (default ``default_cache_dir() / "coco"``).
        annotations_dir: folder with the official annotation files (default
            ``$VLMNB_COCO_ANNOTATIONS`` or ``cache_dir/annotations``).
        base_url: a mirror that serves the same paths as ``http://images.cocodataset.org``.

    Returns:
        ``id -> local path``. Raises FileNotFoundError (annotations missing) or
        ConnectionError (download failed) with the command that fixes it.
    """
    from tqdm.auto import tqdm

    ids = coco_ids() if ids is None else [int(i) for i in ids]
    cache = _coco_cache(cache_dir)
    resolver = _subset_resolver(cache, annotations_dir, ids)
    found = resolver.resolve(ids)
    image_dir = cache / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"images": {}}
    entries = manifest.setdefault("images", {})

    paths: dict[int, Path] = {}
    todo: list[int] = []
    for i in ids:
        dest = image_dir / found[i].file_name
        paths[i] = dest
        entry = entries.get(str(i))
        if not (entry and dest.is_file() and entry.get("file_name") == dest.name
                and _sha256(dest) == entry.get("sha256")):
            todo.append(i)
    for k, i in enumerate(tqdm(todo, desc="COCO images", unit="img", disable=not progress or not todo)):
        url = _image_url(found[i].coco_url, base_url)
        try:
            sha, size = _fetch(url, paths[i], timeout)
        except _DownloadError as exc:
            raise ConnectionError(
                f"could not download COCO image {i} from {url}: {exc}. {len(todo) - k} of {len(ids)} "
                f"images are not in the cache {cache} yet. If this machine is offline, run "
                f"`python -m vlmnb data coco --annotations DIR --cache CACHE` on one with network "
                f"access and copy CACHE to {cache} (or point VLMNB_CACHE_DIR at its parent); "
                f"--base-url selects a mirror.") from None
        entries[str(i)] = {"file_name": paths[i].name, "url": found[i].coco_url, "sha256": sha, "bytes": size}
        _atomic_json(manifest_path, manifest)
    return paths


def coco_samples(n: int | None = None, ids: Iterable[int] | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 annotations_dir: str | os.PathLike | None = None,
                 base_url: str | None = None, progress: bool = True) -> list[Sample]:
    """The paper's COCO images (first ``n``) as samples with objects and instance masks."""
    ids = coco_ids() if ids is None else [int(i) for i in ids]
    ids = ids[: n if n is not None else None]
    paths = download_coco(ids, cache_dir, annotations_dir, base_url, progress=progress)
    resolver = _subset_resolver(_coco_cache(cache_dir), annotations_dir, ids)
    found = resolver.resolve(ids)
    out = []
    for i in ids:
        img = found[i]
        out.append(Sample(
            image_id=str(i), image=Lazy(lambda p=paths[i]: _open_rgb(p)),
            masks=Lazy(lambda i=i: resolver.masks(i)), objects=resolver.objects(i),
            meta={"source": "coco", "path": str(paths[i]), "coco_url": img.coco_url,
                  "file_name": img.file_name, "width": img.width, "height": img.height,
                  "annotation_file": img.source,
                  "instances": dict(Counter(resolver.categories[int(a["category_id"])]
                                            for a in resolver.annotations(i)))}))
    return out


# ============================================================================ MME
MME_HUB_ID = "lmms-lab/MME"
#: the perception subsets, spelled as in the dataset's ``category`` column (as lmms-eval uses them)
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity",
                  "scene", "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_COLUMNS = ("question_id", "image", "question", "answer", "category")


class EncodedImage:
    """An image kept encoded (bytes or a file path) until :meth:`open` decodes it."""

    __slots__ = ("data", "path")

    def __init__(self, data: bytes | None = None, path: str | None = None):
        if data is None and not path:
            raise ValueError("an EncodedImage needs bytes or a path")
        self.data = data
        self.path = path

    def open(self) -> Image.Image:
        """Decode as PIL RGB."""
        if self.data is not None:
            with Image.open(io.BytesIO(self.data)) as im:
                return im.convert("RGB")
        return _open_rgb(Path(self.path))

    def __repr__(self) -> str:
        size = f"{len(self.data) / 1e3:.1f} kB" if self.data is not None else "file"
        return f"<EncodedImage {size} {self.path or ''}>".replace(" >", ">")


def _mme_help(where: str) -> str:
    return (f"download the benchmark from the Hugging Face hub ({MME_HUB_ID}) with\n"
            f"  hf download {MME_HUB_ID} --repo-type dataset --local-dir {where}\n"
            f"(log in first with `hf auth login` if the hub asks; older huggingface_hub: "
            f"huggingface-cli download ...), then load_mme({where!r}) "
            f"or check it with: python -m vlmnb data mme --dir {where}")


def _mme_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no MME data at {path}: " + _mme_help(str(path)))
    files = sorted(p for p in path.rglob("*.parquet")
                   if not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise FileNotFoundError(f"no MME parquet files under {path}: " + _mme_help(str(path)))
    return files


def _mme_categories(categories: str | Iterable[str] | None) -> list[str] | None:
    if categories is None:
        return None
    if isinstance(categories, str):
        if categories.lower() == "perception":
            return list(MME_PERCEPTION)
        if categories.lower() == "cognition":
            return list(MME_COGNITION)
        categories = [categories]
    cats = list(categories)
    known = MME_PERCEPTION + MME_COGNITION
    bad = [c for c in cats if c not in known]
    if bad:
        raise ValueError(f"unknown MME categories {bad}; valid: {', '.join(known)} "
                         "(or 'perception' / 'cognition')")
    return cats


def _encoded(value: Any) -> EncodedImage | None:
    if value is None:
        return None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        return EncodedImage(data, path) if (data is not None or path) else None
    if isinstance(value, (bytes, bytearray)):
        return EncodedImage(bytes(value))
    return EncodedImage(path=str(value))


def load_mme(path_or_dir: str | os.PathLike | None = None,
             categories: str | Iterable[str] | None = None) -> "pandas.DataFrame":  # noqa: F821
    """The MME benchmark as published on the hub (``lmms-lab/MME``, parquet shards).

    Args:
        path_or_dir: a parquet file or a folder searched recursively for ``*.parquet`` (the
            hub snapshot keeps them in ``data/``); default ``default_cache_dir() / "mme"``.
        categories: keep only these ``category`` values (``"perception"`` selects the ten
            perception subsets, :data:`MME_PERCEPTION`).

    Returns:
        One row per question with columns ``question_id``, ``image_id`` (= ``question_id``,
        shared by the two questions about one image), ``question``, ``answer``, ``category``
        and ``image`` (an :class:`EncodedImage`; call ``.open()`` for PIL RGB).
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path_or_dir).expanduser() if path_or_dir is not None else default_cache_dir() / "mme"
    files = _mme_files(root)
    cats = _mme_categories(categories)
    tables = []
    for f in files:
        names = pq.read_schema(f).names
        missing = [c for c in MME_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{f} lacks MME column(s) {missing}; expected {list(MME_COLUMNS)} "
                             f"as in {MME_HUB_ID}")
        filters = [("category", "in", cats)] if cats else None
        tables.append(pq.read_table(f, columns=list(MME_COLUMNS), filters=filters))
    table = pa.concat_tables(tables, promote_options="permissive")
    df = pd.DataFrame({
        "question_id": table.column("question_id").to_pylist(),
        "question": table.column("question").to_pylist(),
        "answer": table.column("answer").to_pylist(),
        "category": table.column("category").to_pylist(),
        "image": [_encoded(v) for v in table.column("image").to_pylist()],
    })
    df.insert(1, "image_id", df["question_id"])
    if cats:
        absent = [c for c in cats if c not in set(df["category"])]
        if absent and len(absent) == len(cats):
            raise ValueError(f"none of the categories {cats} is in {root}; it has "
                             f"{sorted(set(table.column('category').to_pylist()))}")
    return df


def mme_samples(df: "pandas.DataFrame", n: int | None = None) -> list[Sample]:  # noqa: F821
    """One sample per MME image (first ``n``), its questions and answers in ``meta``."""
    out = []
    for image_id, group in df.groupby("image_id", sort=False):
        if n is not None and len(out) >= n:
            break
        enc = group["image"].iloc[0]
        out.append(Sample(
            image_id=str(image_id), image=Lazy(enc.open) if enc is not None else None,
            masks=None, objects=None,
            meta={"source": "mme", "category": group["category"].iloc[0],
                  "questions": group["question"].tolist(), "answers": group["answer"].tolist()}))
    return out


# ============================================================================ CLI
def cli_data(argv: Sequence[str] | None = None) -> int:
    """``python -m vlmnb data coco ...`` / ``python -m vlmnb data mme ...``."""
    parser = argparse.ArgumentParser(prog="python -m vlmnb data",
                                     description="Fetch or check the datasets the chapters use.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    coco = sub.add_parser("coco", help="download the paper's 81 COCO images into the cache")
    coco.add_argument("--annotations", metavar="DIR",
                      help="folder with the official instances_*.json files (unzipped annotations)")
    coco.add_argument("--cache", metavar="DIR", help="COCO cache folder (default: <work tree>/.cache/vlmnb/coco)")
    coco.add_argument("--base-url", help="mirror serving the paths of http://images.cocodataset.org")
    coco.add_argument("--n", type=int, help="only the first N ids")
    mme = sub.add_parser("mme", help="check a local copy of the MME benchmark")
    mme.add_argument("--dir", metavar="DIR", help=f"folder with the {MME_HUB_ID} parquet files "
                     "(default: <work tree>/.cache/vlmnb/mme)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        if args.dataset == "coco":
            ids = coco_ids()[: args.n]
            cache = _coco_cache(args.cache)
            paths = download_coco(ids, cache, args.annotations, args.base_url)
            resolver = _subset_resolver(cache, args.annotations, ids)
            n_inst = sum(len(resolver.annotations(i)) for i in ids)
            total = sum(p.stat().st_size for p in paths.values())
            print(f"{len(paths)} COCO images ({total / 1e6:.1f} MB, {n_inst} instance annotations) "
                  f"cached and verified in {cache}")
        else:
            df = load_mme(args.dir)
            per_image = df.groupby("image_id").size()
            print(f"MME: {len(df)} questions on {df['image_id'].nunique()} images")
            counts = df.groupby("category").agg(questions=("question", "size"), images=("image_id", "nunique"))
            print(counts.to_string())
            odd = per_image[per_image != 2]
            if len(odd):
                print(f"warning: {len(odd)} image(s) do not have exactly two questions, "
                      f"e.g. {list(odd.index[:3])}", file=sys.stderr)
                return 1
            absent = [c for c in MME_PERCEPTION if c not in set(df["category"])]
            if absent:
                print(f"warning: perception categories missing: {absent}", file=sys.stderr)
                return 1
    except (FileNotFoundError, ConnectionError, ValueError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
