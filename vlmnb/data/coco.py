"""The paper's COCO images: ids, categories and their synonyms, annotations, download, samples.

COCO images are never bundled: each id of the paper (:func:`coco_ids`, package data
``data/coco_ids.txt``) is resolved through the official annotation files (its ``coco_url``,
:class:`CocoResolver`), downloaded once into a local cache (:func:`download_coco`), checked
against a sha256 manifest on every reuse, and re-downloaded when the check fails. Run this once
on a machine with network access (it also caches the few annotations the chapters need, so
later runs need neither the network nor the big annotation files)::

    python -m vlmnb data coco --annotations DIR

:func:`match_category` maps a description's words to a COCO category (``"man"`` -> person).
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmnb.core.images import load_image
from vlmnb.core.paths import cache_dir as cache_root
from vlmnb.core.text import plural
from vlmnb.data.sample import Lazy, Sample
from vlmnb.core.progress import progress_bar as tqdm

__all__ = [
    "COCO_CATEGORIES", "COCO_SYNONYMS", "coco_ids", "category_synonyms", "match_category",
    "CocoImage", "CocoResolver", "coco_cache_dir", "coco_resolver", "download_coco", "coco_samples",
]

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
                index.setdefault(plural(word), cat)
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
    def scanned(self) -> list[Path]:
        """The annotation files read so far, in order (reading stops once every wanted id is found)."""
        return list(self._scanned)

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


def coco_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The COCO cache folder: ``cache_dir`` if given, else ``<cache>/coco`` (see
    :func:`vlmnb.core.paths.cache_dir`)."""
    return Path(cache_dir) if cache_dir is not None else cache_root() / "coco"


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


def coco_resolver(ids: Iterable[int] | None = None, cache_dir: str | os.PathLike | None = None,
                  annotations_dir: str | os.PathLike | None = None) -> CocoResolver:
    """A :class:`CocoResolver` for ``ids`` (default: the paper's 81) over the cached annotation
    subset in ``cache_dir`` (see :func:`coco_cache_dir`), built from the official files in
    ``annotations_dir`` when the subset does not cover ``ids`` yet."""
    ids = coco_ids() if ids is None else [int(i) for i in ids]
    return _subset_resolver(coco_cache_dir(cache_dir), annotations_dir, ids)


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
        cache_dir: the COCO cache (default: :func:`coco_cache_dir`, ``<cache>/coco``).
        annotations_dir: folder with the official annotation files (default
            ``$VLMNB_COCO_ANNOTATIONS`` or ``cache_dir/annotations``).
        base_url: a mirror that serves the same paths as ``http://images.cocodataset.org``.

    Returns:
        ``id -> local path``. Raises FileNotFoundError (annotations missing) or
        ConnectionError (download failed) with the command that fixes it.
    """
    ids = coco_ids() if ids is None else [int(i) for i in ids]
    cache = coco_cache_dir(cache_dir)
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
    resolver = _subset_resolver(coco_cache_dir(cache_dir), annotations_dir, ids)
    found = resolver.resolve(ids)
    out = []
    for i in ids:
        img = found[i]
        out.append(Sample(
            image_id=str(i), image=Lazy(lambda p=paths[i]: load_image(p)),
            masks=Lazy(lambda i=i: resolver.masks(i)), objects=resolver.objects(i),
            meta={"source": "coco", "path": str(paths[i]), "coco_url": img.coco_url,
                  "file_name": img.file_name, "width": img.width, "height": img.height,
                  "annotation_file": img.source,
                  "instances": dict(Counter(resolver.categories[int(a["category_id"])]
                                            for a in resolver.annotations(i)))}))
    return out
