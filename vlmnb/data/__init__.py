"""Image sources for the chapters: toy scenes, a folder of images, the paper's COCO images, MME;
the masks of described details; the result store.

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

Modules (each importing only those above it in this list, and nothing from the layers above
data): :mod:`~vlmnb.data.sample` (:class:`Sample`, :class:`Lazy`), :mod:`~vlmnb.data.coco`,
:mod:`~vlmnb.data.mme`, :mod:`~vlmnb.data.sources` (:func:`images`, toy and file sources),
:mod:`~vlmnb.data.masks` (mask type, exact and COCO masks, reject lists),
:mod:`~vlmnb.data.segment` (detector + Segment Anything masks, :func:`mask_source`),
:mod:`~vlmnb.data.store` (the result store; it imports none of the others).
"""
from __future__ import annotations

from vlmnb.data.coco import (
    COCO_CATEGORIES,
    COCO_SYNONYMS,
    CocoImage,
    CocoResolver,
    category_synonyms,
    coco_cache_dir,
    coco_ids,
    coco_resolver,
    coco_samples,
    download_coco,
    match_category,
)
from vlmnb.data.masks import CocoMasks, DetailMask, FirstOf, MaskSource, RejectList, ToyMasks
from vlmnb.data.mme import MME_COGNITION, MME_HUB_ID, MME_PERCEPTION, EncodedImage, load_mme, mme_samples
from vlmnb.data.sample import Lazy, Sample
from vlmnb.data.segment import mask_source
from vlmnb.data.sources import DEFAULT_TOY_N, default_cache_dir, images, toy_samples

__all__ = [
    "Sample", "Lazy", "images", "toy_samples", "default_cache_dir", "DEFAULT_TOY_N",
    "coco_ids", "CocoImage", "CocoResolver", "coco_cache_dir", "coco_resolver", "download_coco", "coco_samples",
    "COCO_CATEGORIES", "COCO_SYNONYMS", "category_synonyms", "match_category",
    "load_mme", "mme_samples", "EncodedImage", "MME_PERCEPTION", "MME_COGNITION", "MME_HUB_ID",
    "DetailMask", "MaskSource", "ToyMasks", "CocoMasks", "FirstOf", "RejectList", "mask_source",
]
