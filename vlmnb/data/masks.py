"""Masks of a description's details: the mask type, the sources that need no model, reject lists.

A *mask source* is anything callable as ``source(sample, detail) -> DetailMask`` (the
:class:`MaskSource` protocol). This module holds the ones that read masks the image source
already has: the toy scenes' exact masks (:class:`ToyMasks`) and COCO instance masks matched by
category name and synonyms (:class:`CocoMasks`); :class:`FirstOf` asks several in turn. The
source that makes masks with models (a text-conditioned detector, then Segment Anything) and
:func:`vlmnb.data.segment.mask_source`, which picks a source by name, live in
:mod:`vlmnb.data.segment`. :class:`RejectList` holds the details whose masks a person rejected.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol

import numpy as np

from vlmnb.data.coco import match_category
from vlmnb.toy.scenes import parse_description

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DetailMask", "MaskSource", "ToyMasks", "CocoMasks", "FirstOf", "RejectList"]


def _norm(name: str) -> str:
    return " ".join(str(name).lower().split())


@dataclass
class DetailMask:
    """A detail's mask in the original image, or why there is none.

    ``mask``: bool (H, W) or None; ``source``: which source made it; ``note``: how it was
    matched, or why it was rejected; ``score``: the source's confidence (NaN for exact masks).
    """

    mask: np.ndarray | None
    source: str
    note: str = ""
    score: float = float("nan")

    @property
    def ok(self) -> bool:
        """True when there is a mask with at least one pixel set."""
        return self.mask is not None and bool(np.any(self.mask))


class MaskSource(Protocol):
    """Anything that gives a detail its mask: ``source(sample, detail) -> DetailMask``.

    ``sample`` is a :class:`vlmnb.data.Sample`; ``detail`` a fine detail
    (:class:`vlmnb.experiments.localize.Detail`: ``name``, ``phrase``, ``clause()``, ...).
    """

    name: str

    def __call__(self, sample, detail) -> DetailMask:
        """The detail's mask in the sample's image, or a :class:`DetailMask` saying why there is none."""


class ToyMasks:
    """Exact masks of the toy scenes (``sample.meta["scene"]``).

    The object is matched by name (colour + shape) and, when the description says where it is
    ("... at the top left"), by cell; a name that is drawn but not at the stated cell gets the
    union of that name's objects (noted); a name that is not drawn at all was hallucinated by
    the baseline and gets no mask.
    """

    name = "toy-exact"

    def __call__(self, sample, detail) -> DetailMask:
        """The detail's exact mask in the toy scene (see the class docstring for the matching)."""
        scene = (sample.meta or {}).get("scene")
        if scene is None:
            raise ValueError(f"sample {sample.image_id!r} is not a toy scene (no meta['scene']); "
                             "use CocoMasks or the text-prompted source for other images")
        said = parse_description(detail.clause())
        cell = next((o.cell for o in said if o.name == _norm(detail.name) and o.cell), "")
        same = [i for i, o in enumerate(scene.objects) if o.name == _norm(detail.name)]
        if not same:
            return DetailMask(None, self.name, f"no {detail.name} in the scene (hallucinated)")
        at = [i for i in same if cell and scene.objects[i].cell == cell]
        chosen = at or same
        note = f"exact mask at the {cell}" if at else (
            f"{len(same)} {detail.name} drawn, none at the stated cell {cell!r}: union" if cell
            else "exact mask (no position stated)")
        return DetailMask(np.any(np.asarray(scene.masks)[chosen], axis=0), self.name, note)


class CocoMasks:
    """COCO instance masks (``sample.masks``: category -> masks, from pycocotools), matched to
    the detail by category name and synonyms (:func:`vlmnb.data.coco.match_category`; "man" ->
    person). All instances of the category in the image are united (the description does not
    say which one it meant)."""

    name = "coco"

    def __call__(self, sample, detail) -> DetailMask:
        """The union of the image's instance masks of the category the detail names."""
        masks = sample.masks
        if not masks:
            return DetailMask(None, self.name, "the image has no instance masks")
        category = match_category(detail.name, categories=list(masks))
        if category is None:
            category = match_category(detail.phrase, categories=list(masks))
        if category is None:
            return DetailMask(None, self.name, f"{detail.name!r} names no annotated COCO category of this image")
        union = np.any(np.stack([np.asarray(m, dtype=bool) for m in masks[category]]), axis=0)
        return DetailMask(union, self.name, f"COCO {category} ({len(masks[category])} instance(s))")


class FirstOf:
    """Ask several mask sources in turn; the first that gives a mask wins (e.g. COCO's exact
    instance masks where the detail is a COCO category, the text-prompted source otherwise).
    When none does, the notes of all are joined."""

    def __init__(self, *sources):
        if not sources:
            raise ValueError("FirstOf needs at least one mask source")
        self.sources = sources
        self.name = "+".join(getattr(s, "name", type(s).__name__) for s in sources)

    def __call__(self, sample, detail) -> DetailMask:
        """The first source's mask that is not empty, or why none gave one."""
        notes = []
        for source in self.sources:
            dm = source(sample, detail)
            if dm.ok:
                return dm
            notes.append(f"{dm.source}: {dm.note}")
        return DetailMask(None, self.name, "; ".join(notes))


class RejectList:
    """Details whose masks a person rejected after looking at them (the paper's manual check).

    A CSV file with the columns ``image_id,detail,reason``; ``detail`` is a detail's name, or
    ``name#occurrence`` to reject one mention only; lines starting with ``#`` are comments.
    A missing file is an empty list. :meth:`write_template` starts one from measured details.
    """

    COLUMNS = ("image_id", "detail", "reason")

    def __init__(self, entries: Iterable[tuple[str, str, str]] = (), path: str | os.PathLike | None = None):
        self.entries = [(str(i), str(d), str(r)) for i, d, r in entries]
        self.path = Path(path) if path is not None else None

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> "RejectList":
        """Read a reject list file; ``None`` or a missing file gives an empty list."""
        if path is None:
            return cls()
        path = Path(path)
        if not path.is_file():
            return cls(path=path)
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not lines:
            return cls(path=path)
        reader = csv.DictReader(lines)
        if not {"image_id", "detail"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: a reject list needs the header line 'image_id,detail,reason' "
                             f"(found {lines[0]!r})")
        return cls([(r["image_id"], r["detail"], r.get("reason") or "") for r in reader], path=path)

    def reason(self, image_id: str, name: str, occurrence: int | None = None) -> str | None:
        """Why the detail is rejected, or None."""
        for i, d, r in self.entries:
            if i != str(image_id):
                continue
            if _norm(d) == _norm(name) or (occurrence is not None and _norm(d) == _norm(f"{name}#{occurrence}")):
                return r or "rejected by hand"
        return None

    def __len__(self) -> int:
        """The number of entries."""
        return len(self.entries)

    @staticmethod
    def write_template(details: pd.DataFrame, path: str | os.PathLike) -> Path:
        """Write every measured detail as a commented-out line, ready to be reviewed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# Details whose masks are wrong, poorly localised or of low quality.",
                 "# Uncomment a line (remove the leading '# ') to leave that detail out; say why.",
                 ",".join(RejectList.COLUMNS)]
        seen = set()
        for row in details.itertuples():
            key = (row.image_id, f"{row.detail}#{row.occurrence}")
            if key not in seen:
                seen.add(key)
                lines.append(f"# {row.image_id},{row.detail}#{row.occurrence},mask does not match")
        path.write_text("\n".join(lines) + "\n")
        return path
