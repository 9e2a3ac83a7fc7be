"""Where samples come from: :func:`images` picks the source (toy scenes, a folder or files of
images, the paper's COCO images, MME); this module holds the toy and file sources.

Caches live in the work tree, never in the home folder: :func:`default_cache_dir`.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmnb.core.images import load_image
from vlmnb.core.paths import cache_dir
from vlmnb.data.coco import coco_samples
from vlmnb.data.mme import load_mme, mme_samples
from vlmnb.data.sample import Lazy, Sample
from vlmnb.toy.scenes import make_scenes

__all__ = ["images", "toy_samples", "default_cache_dir", "IMAGE_SUFFIXES", "DEFAULT_TOY_N", "SOURCES_HELP"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_TOY_N = 16
SOURCES_HELP = ("'toy' (synthetic scenes, the default), 'coco' (the paper's 81 COCO images), "
                "'mme' (the MME benchmark), a folder of images, an image file, or a list of image paths")


def default_cache_dir() -> Path:
    """Where downloads are cached: ``$VLMNB_CACHE_DIR``, else ``<work tree>/.cache/vlmnb``
    (the same as :func:`vlmnb.core.paths.cache_dir`)."""
    return cache_dir()


def images(source: Any = "toy", n: int | None = None, seed: int = 0, **kw) -> list[Sample]:
    """Samples from ``source``: see the module docstring of :mod:`vlmnb.data` for the sources.

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
            image=Lazy(lambda p=p: load_image(p)), masks=None, objects=None,
            meta={"source": "file", "path": str(p), "width": width, "height": height}))
    return out
