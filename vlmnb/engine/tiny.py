"""Tiny randomly initialised models of every supported family, with offline processors.

``build(family)`` returns ``(model, processor)``: the family's real model class built from a
small config (two decoder layers, hidden size 64, a vision encoder of one or two layers that
sees 32x32 views), and the family's real processor class made without any download: a
byte-level BPE tokenizer trained on a built-in corpus with the special tokens the family's
processor needs, the family's image processor class with small sizes, and a chat template that
writes the family's prompt format. ``save(family, path)`` writes a folder that
``AutoProcessor`` / ``AutoModelForImageTextToText`` load offline -- the chapter notebooks accept
such a folder as their ``model`` parameter. A family whose checkpoints run their own code
(InternVL2) is built from that code, and its folder holds it: ``vlmnb.load(folder,
trust_remote_code=True)`` loads it. Everything is deterministic in ``seed``.

These models produce random text; they exist to exercise the code paths (spans, geometry,
knockout, recording) of each family on a CPU in seconds. Each family's builder lives in its
registry entry (:mod:`vlmnb.engine.families`), the parts they share in :mod:`vlmnb.engine.tinykit`.
"""
from __future__ import annotations

from pathlib import Path

from vlmnb.engine import families
from vlmnb.engine.tinykit import DEFAULT_VIEW

#: the families tiny models exist for: every family of the registry
FAMILIES = families.NAMES
#: every tiny model the tests run: one per family, plus each family's ``tiny_variants`` (another
#: text decoder, say) as ``"<family>-<variant>"``
MODELS = FAMILIES + tuple(f"{name}-{variant}" for name in FAMILIES for variant in families.get(name).tiny_variants)


def family_of(model: str) -> str:
    """The family of a tiny model's name (one of :data:`MODELS`)."""
    return model.split("-", 1)[0]


def build(family: str, seed: int = 0, image_size: int | None = None):
    """A tiny random ``(model, processor)`` of ``family`` (one of :data:`MODELS`: a family, or a
    family's variant such as ``"internvl2-qwen2"``).

    ``image_size`` is the pixel side of one view the vision encoder sees (a crop, tile or
    square; default 32, a multiple of 16). The model is in eval mode with greedy generation
    defaults; weights depend only on ``seed``.
    """
    if family not in MODELS:
        raise ValueError(f"unknown family {family!r}; tiny models exist for: {', '.join(MODELS)}")
    view = int(image_size or DEFAULT_VIEW)
    if view % 16 or view <= 0:
        raise ValueError(f"image_size must be a positive multiple of 16, got {image_size}")
    name, _, variant = family.partition("-")
    entry = families.get(name)
    return entry.build_tiny(seed, view, variant) if variant else entry.build_tiny(seed, view)


def save(family: str, path, seed: int = 0, image_size: int | None = None) -> Path:
    """Write a tiny ``family`` model and its processor to folder ``path`` (save_pretrained
    layout; loadable offline with ``AutoProcessor`` / ``AutoModelForImageTextToText``, or, for a
    family whose checkpoints run their own code, with ``vlmnb.load(path, trust_remote_code=True)``)."""
    path = Path(path)
    model, processor = build(family, seed=seed, image_size=image_size)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
