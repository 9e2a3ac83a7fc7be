"""Are fine details read from the image where they are? Localization accuracy per layer (Sec. 4.5).

A *fine detail* is an object that the unmodified ("baseline") description names but the
description generated under KO img->gen (generated tokens never see the image) loses: the query
tokens did not carry it, so it must have been read from the image tokens directly. For each
detail this module finds

1. **its generated tokens**: where the judge's object name occurs in the baseline text
   (:func:`find_mentions`: whole words, any letter case, singular or plural, hyphen or space;
   when the full phrase is absent, its head noun), mapped to generated-token indices through
   the engine's character offsets, so a word split into several tokens gives several;
2. **its mask** in the original image, from one of the sources behind the
   :class:`MaskSource` interface: the toy scenes' exact masks (:class:`ToyMasks`), COCO instance
   masks matched by category name and synonyms (:class:`CocoMasks`), or a text-prompted
   detector + Segment Anything for any image (:class:`vlmnb.data.segment.TextPromptedMasks`);
   masks can be filtered by quality and by a hand-written reject list (:class:`RejectList`);
3. **where its tokens look**: the head-averaged attention of those tokens over the image
   tokens, per layer, averaged over the tokens.

Rows of "the detail's tokens" (``which``): ``"producing"`` (default) takes the recording rows
of the forward steps that *produced* the detail's tokens, i.e. the moment the model decided to
write the word (row ``i`` is the step that produced generated token ``i``, see
:mod:`vlmnb.engine.record`); ``"reading"`` takes the steps whose query *is* the detail's token
(row ``i + 1``).

The metric, as the paper defines it: per layer, the peak of that attention over the image
tokens (tokens that see pixels; structure tokens are excluded) is mapped to the original image
through the token geometry (:class:`vlmnb.engine.spans.Geometry`), and the detail counts as
*localised* when the centre of the peak token lies within one token of the mask: the distance
from that point to the nearest mask pixel (pixel centres), measured in units of the peak
token's own width and height, is at most 1 (for InternVL2's 40-pixel tokens: at most 40 px,
the paper's footnote). Tiles and thumbnails are both candidates for the peak; each is measured
in its own token size. *Chance* for a detail is the fraction of image tokens for which the same
rule holds (the accuracy of a peak drawn uniformly among the image tokens); the chapter's
chance line averages it over details. Accuracy per layer is the mean over details; the paper
then averages over windows of consecutive layers (10 of 80 for InternVL2, 4 of 32 for LLaVA).
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "Detail", "DetailMask", "MaskSource", "ToyMasks", "CocoMasks", "FirstOf", "mask_source", "RejectList",
    "find_mentions", "missed_objects", "fine_details", "locate", "detail_steps",
    "within_one_token", "chance_level", "localize", "measure", "select", "accuracy_by_layer",
    "accuracy_by_window", "layer_windows", "window_size", "chance", "localization_claims",
    "gallery_items", "map_window", "rows_comparison", "paper_table", "closing_note", "ROW_CHOICES",
]

CONFIG = "localization"  # the store's ``config`` column for this chapter's units


# ============================================================================ finding details
_ARTICLES = {"a", "an", "the", "some", "two", "three", "several", "many"}
_IRREGULAR = {"man": "men", "woman": "women", "child": "children", "person": "people",
              "mouse": "mice", "knife": "knives", "leaf": "leaves", "shelf": "shelves",
              "foot": "feet", "tooth": "teeth", "goose": "geese", "wolf": "wolves", "loaf": "loaves"}
_SINGULAR = {v: k for k, v in _IRREGULAR.items()}


def _forms(word: str) -> list[str]:
    """Singular and plural spellings of one (lower-case) word."""
    forms = {word}
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    if word in _SINGULAR:
        forms.add(_SINGULAR[word])
    if re.search(r"(s|x|z|ch|sh)$", word):
        forms.add(word + "es")
    elif re.search(r"[^aeiou]y$", word):
        forms.add(word[:-1] + "ies")
    forms.add(word + "s")
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 2:
        forms.add(word[:-1])
    return sorted(forms, key=len, reverse=True)


def _phrase_pattern(words: Sequence[str]) -> re.Pattern:
    head = "|".join(re.escape(f) for f in _forms(words[-1]))
    body = r"[\s\-]+".join([re.escape(w) for w in words[:-1]] + [f"(?:{head})"])
    return re.compile(r"(?<![A-Za-z0-9])" + body + r"(?![A-Za-z0-9])", re.IGNORECASE)


def find_mentions(text: str, name: str) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` where the object ``name`` is mentioned in ``text``, in order.

    Whole words only, any letter case, the last word in the singular or the plural ("bagel"
    finds "bagels", "men" finds "man"), hyphen or spaces between words; leading articles of the
    name are ignored. When the full name never occurs, its last word (the head noun) is looked
    for instead ("cycling shoes" -> "shoes"). Returns ``[]`` when neither occurs.
    """
    words = [w for w in re.split(r"[\s\-]+", name.strip().lower()) if w]
    while len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    if not words:
        return []
    for candidate in (words, words[-1:]):
        found = [m.span() for m in _phrase_pattern(candidate).finditer(text)]
        if found:
            return found
    return []


def _norm(name: str) -> str:
    return " ".join(str(name).lower().split())


def missed_objects(result) -> list[tuple[str, int]]:
    """``(name, occurrence)`` for every object of the original description that the modified
    one lost, from a :class:`~vlmnb.judge.JudgeResult`.

    ``occurrence`` numbers the original's listings of the same name (0, 1, ...): when a name is
    listed ``n`` times and ``m`` of them were matched, the matched ones are taken to be the
    first ``m`` mentions (the exact toy judge matches in reading order) and the lost ones
    occurrences ``m .. n-1``. Open-vocabulary judges list each name once, so a lost object is
    occurrence 0: its first mention.
    """
    listed = Counter(_norm(o) for o in result.original_objects)
    matched = Counter(_norm(o) for o, _ in result.matched)
    out, seen = [], set()
    for name in result.original_objects:
        key = _norm(name)
        if key in seen:
            continue
        seen.add(key)
        out += [(name, k) for k in range(matched[key], listed[key])]
    return out


def fine_details(frame: pd.DataFrame, judge: Any = None, knocked: str = "img->gen all",
                 baseline: str = "baseline", progress: bool = False) -> pd.DataFrame:
    """The fine details of a sweep: objects of the baseline description lost under ``knocked``.

    ``frame`` holds the sweep's rows (:func:`vlmnb.experiments.sweep.run`) with at least the baseline and
    the ``knocked`` configuration. Each pair is compared with ``judge`` (as in
    :func:`vlmnb.experiments.sweep.score`; LLM judges answer from their cache). Returns one row per detail:
    ``image_id, detail, occurrence, baseline_text, knocked_text``; images whose judgement
    failed are left out.
    """
    from vlmnb.judge import compare_many, get_judge
    from vlmnb.experiments.sweep import descriptions

    text = descriptions(frame).set_index(["image_id", "config"]).text
    configs = set(text.index.get_level_values("config"))
    for needed in (baseline, knocked):
        if needed not in configs:
            raise ValueError(f"the sweep has no {needed!r} descriptions; run sweep.run with the "
                             f"configurations Config('baseline') and Config('img->gen') first")
    image_ids = [i for i in dict.fromkeys(text.index.get_level_values("image_id"))
                 if (i, baseline) in text.index and (i, knocked) in text.index]
    pairs = [(text[(i, baseline)], text[(i, knocked)]) for i in image_ids]
    results = compare_many(pairs, judge=get_judge(judge), progress=progress)
    rows = []
    for image_id, (base, ko), res in zip(image_ids, pairs, results):
        if not res.ok:
            continue
        for name, k in missed_objects(res):
            rows.append({"image_id": str(image_id), "detail": name, "occurrence": k,
                         "baseline_text": base, "knocked_text": ko})
    return pd.DataFrame(rows, columns=["image_id", "detail", "occurrence", "baseline_text", "knocked_text"])


@dataclass(frozen=True)
class Detail:
    """One fine detail tied to its mention in a generated text.

    ``name``: the object as the judge listed it; ``occurrence``: which of its mentions;
    ``start, end``: the mention's characters in ``text``; ``tokens``: indices of the generated
    tokens that overlap the mention; ``text``: the whole generated description.
    """

    image_id: str
    name: str
    occurrence: int
    start: int
    end: int
    tokens: tuple[int, ...]
    text: str

    @property
    def phrase(self) -> str:
        """The mention as written in the description."""
        return self.text[self.start:self.end]

    @property
    def key(self) -> str:
        """A unique name for the detail within its image: ``name#occurrence``."""
        return f"{self.name}#{self.occurrence}"

    def clause(self) -> str:
        """The part of the sentence around the mention (up to the neighbouring , ; or .)."""
        left = max(self.text.rfind(c, 0, self.start) for c in ",;.\n")
        right = [i for i in (self.text.find(c, self.end) for c in ",;.\n") if i >= 0]
        return self.text[left + 1: min(right) if right else len(self.text)].strip()


def locate(generation, image_id: str, name: str, occurrence: int = 0) -> Detail | None:
    """Tie a detail to its generated tokens through the engine's character offsets.

    ``generation`` is a :class:`~vlmnb.engine.vlm.Generation` (``.text``, ``.tokens_in``).
    Returns None when the name is not mentioned ``occurrence + 1`` times; when the name is
    listed more often than it is mentioned (the judge counted "two dogs" as two), the last
    mention is used.
    """
    spans = find_mentions(generation.text, name)
    if not spans:
        return None
    start, end = spans[min(occurrence, len(spans) - 1)]
    tokens = tuple(generation.tokens_in(start, end))
    if not tokens:
        return None
    return Detail(str(image_id), name, int(occurrence), int(start), int(end), tokens, generation.text)


def detail_steps(tokens: Sequence[int], n_steps: int, which: str = "producing") -> np.ndarray:
    """Recording rows of a detail's tokens: ``"producing"`` (row ``i`` produced token ``i``)
    or ``"reading"`` (row ``i + 1``: the token itself is the query); rows past the recording
    are dropped."""
    if which not in ("producing", "reading"):
        raise ValueError(f"which must be 'producing' or 'reading', got {which!r}")
    steps = np.asarray(tokens, dtype=np.int64) + (1 if which == "reading" else 0)
    return steps[(steps >= 0) & (steps < n_steps)]


# ============================================================================ masks
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
        return self.mask is not None and bool(np.any(self.mask))


class MaskSource(Protocol):
    """Anything that gives a detail its mask: ``source(sample, detail) -> DetailMask``."""

    name: str

    def __call__(self, sample, detail: Detail) -> DetailMask: ...


class ToyMasks:
    """Exact masks of the toy scenes (``sample.meta["scene"]``).

    The object is matched by name (colour + shape) and, when the description says where it is
    ("... at the top left"), by cell; a name that is drawn but not at the stated cell gets the
    union of that name's objects (noted); a name that is not drawn at all was hallucinated by
    the baseline and gets no mask.
    """

    name = "toy-exact"

    def __call__(self, sample, detail: Detail) -> DetailMask:
        from vlmnb.toy.scenes import parse_description

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
    the detail by category name and synonyms (:func:`vlmnb.data.match_category`; "man" ->
    person). All instances of the category in the image are united (the description does not
    say which one it meant)."""

    name = "coco"

    def __call__(self, sample, detail: Detail) -> DetailMask:
        from vlmnb.data import match_category

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

    def __call__(self, sample, detail: Detail) -> DetailMask:
        notes = []
        for source in self.sources:
            dm = source(sample, detail)
            if dm.ok:
                return dm
            notes.append(f"{dm.source}: {dm.note}")
        return DetailMask(None, self.name, "; ".join(notes))


def mask_source(kind: str | Any = "auto", images: Any = None, **kwargs):
    """A mask source by name: ``"toy"``, ``"coco"``, ``"sam"`` (text-prompted detector + SAM;
    ``kwargs`` such as ``cache_dir`` go to :meth:`vlmnb.data.segment.TextPromptedMasks.load` and are
    not used by the other sources), ``"coco+sam"`` (COCO masks where the detail names a COCO
    category, the text-prompted source otherwise, see :class:`FirstOf`) or ``"auto"``: the exact
    masks for ``images="toy"``, COCO masks for ``"coco"``, else the text-prompted source. An
    object with ``__call__(sample, detail)`` is returned as it is."""
    if not isinstance(kind, str):
        if not callable(kind):
            raise TypeError(f"{kind!r} is not a mask source: it needs __call__(sample, detail)")
        return kind
    if kind == "auto":
        kind = {"toy": "toy", "coco": "coco"}.get(images if isinstance(images, str) else "", "sam")
    if kind == "toy":
        return ToyMasks()
    if kind == "coco":
        return CocoMasks()
    if kind in ("sam", "coco+sam"):
        from vlmnb.data.segment import TextPromptedMasks

        sam = TextPromptedMasks.load(**kwargs)
        return sam if kind == "sam" else FirstOf(CocoMasks(), sam)
    raise ValueError(f"unknown mask source {kind!r}; use 'auto', 'toy', 'coco', 'sam' or 'coco+sam'")


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


# ============================================================================ the metric
def _token_sizes(boxes: np.ndarray) -> np.ndarray:
    return np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)


def within_one_token(geometry, mask: np.ndarray, tolerance: float = 1.0) -> np.ndarray:
    """Per image-span token: does the centre of its box lie within ``tolerance`` tokens of the mask?

    The mask is the union of its pixels' squares (pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``
    of the original image); the distance from the box centre to that region is Euclidean with x
    measured in units of the token's width and y in units of its height, so one token is one
    unit whatever the token's size or aspect (tiles and thumbnails each in their own size).
    A centre inside the mask has distance 0. Structure tokens (no box) are False.
    ``mask`` is bool (H, W) in original-image pixels.
    """
    from scipy.spatial import cKDTree

    mask = np.asarray(mask, dtype=bool)
    W, H = geometry.image_size
    if mask.shape != (H, W):
        raise ValueError(f"mask has shape {mask.shape} but the image is {H}x{W} (H x W); "
                         "give the mask in original-image pixels")
    boxes = np.asarray(geometry.boxes, dtype=float)
    out = np.zeros(len(boxes), dtype=bool)
    has_box = np.isfinite(boxes).all(axis=1)
    if not mask.any() or not has_box.any():
        return out
    # the nearest point of the region to an outside point lies on a boundary pixel
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    ys, xs = np.nonzero(mask & ~interior)
    lo = np.stack([xs, ys], axis=1).astype(float)  # pixel squares [lo, lo + 1)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    sizes = _token_sizes(boxes)
    groups: dict[tuple[float, float], list[int]] = {}
    for i in np.flatnonzero(has_box):  # one tree per token size
        groups.setdefault((round(float(sizes[i, 0]), 6), round(float(sizes[i, 1]), 6)), []).append(i)
    for (w, h), members in groups.items():
        scale = np.array([1.0 / max(w, 1e-9), 1.0 / max(h, 1e-9)])
        tree = cKDTree((lo + 0.5) * scale)
        half_diagonal = 0.5 * float(np.hypot(*scale))
        for i, near in zip(members, tree.query_ball_point(centres[members] * scale, tolerance + half_diagonal)):
            cx, cy = centres[i]
            px, py = int(np.floor(cx)), int(np.floor(cy))
            if 0 <= px < W and 0 <= py < H and mask[py, px]:
                out[i] = True
                continue
            if not near:
                continue
            sq = lo[near]
            dx = np.maximum(np.maximum(sq[:, 0] - cx, cx - (sq[:, 0] + 1)), 0) * scale[0]
            dy = np.maximum(np.maximum(sq[:, 1] - cy, cy - (sq[:, 1] + 1)), 0) * scale[1]
            out[i] = bool(np.min(np.hypot(dx, dy)) <= tolerance + 1e-9)
    return out


def chance_level(geometry, mask: np.ndarray, tolerance: float = 1.0) -> float:
    """The fraction of image tokens (tokens with a box) within one token of the mask."""
    near = within_one_token(geometry, mask, tolerance)
    n = int(np.isfinite(np.asarray(geometry.boxes, float)).all(axis=1).sum())
    return float(near.sum() / n) if n else float("nan")


def localize(geometry, mask: np.ndarray, attention: np.ndarray, tolerance: float = 1.0,
             near: np.ndarray | None = None) -> dict:
    """The paper's metric for one detail at every layer.

    ``attention``: (n_layers, n_image_span) head-averaged attention of the detail's tokens to
    the image-span tokens (columns as ``geometry.boxes``). Returns a dict of arrays over layers:
    ``peak`` (token index of the maximum among tokens with a box), ``peak_x``, ``peak_y`` (its
    box centre in original pixels), ``localized`` (bool), plus ``chance`` (a float).
    ``near`` may pass :func:`within_one_token` of the same mask, computed once.
    """
    attention = np.atleast_2d(np.asarray(attention, dtype=float))
    boxes = np.asarray(geometry.boxes, dtype=float)
    if attention.shape[1] != len(boxes):
        raise ValueError(f"attention has {attention.shape[1]} columns but the geometry has {len(boxes)} "
                         "image-span tokens; record with Record(image_rows=True) on the same input")
    has_box = np.isfinite(boxes).all(axis=1)
    if near is None:
        near = within_one_token(geometry, mask, tolerance)
    masked = np.where(has_box[None, :], attention, -np.inf)
    peak = np.argmax(masked, axis=1)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    return {"peak": peak, "peak_x": centres[peak, 0], "peak_y": centres[peak, 1],
            "localized": near[peak], "chance": float(near.sum() / max(int(has_box.sum()), 1))}


# ============================================================================ running it
ROW_CHOICES = ("producing", "reading")


def _as_which(which) -> tuple[str, ...]:
    which = (which,) if isinstance(which, str) else tuple(which)
    if not which:
        raise ValueError("which must name at least one of 'producing', 'reading'")
    for w in which:
        detail_steps([], 0, w)  # validates the name
    return which


def _replay(vlm, inp, text: str):
    """The baseline's generation with attention recorded, from one teacher-forced forward pass.

    The text is tokenised again; the ids count as the generated ones only when they decode to
    the same text and every one of them is the model's greedy choice at its position (then
    greedy generation would have produced exactly these tokens, and the recorded rows are the
    same rows as during generation). Otherwise None: the caller generates again.
    """
    from vlmnb.engine.vlm import Generation, _token_offsets
    from vlmnb.engine.record import Record

    tokenizer = vlm.tokenizer
    try:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except Exception:  # noqa: BLE001 - any tokenizer trouble: generate instead
        return None
    if not ids or tokenizer.decode(ids, skip_special_tokens=True) != text:
        return None
    logits, rec = vlm.forward(inp, ids, record=Record(fractions=False, image_rows=True))
    prompt = int(inp.inputs["input_ids"].shape[-1])
    greedy = logits[0, prompt - 1: prompt - 1 + len(ids)].argmax(-1).tolist()
    if greedy != ids:
        return None
    decoded, offsets = _token_offsets(tokenizer, ids)
    if decoded != text:
        return None
    return Generation(text=decoded, token_ids=ids, tokens=[decoded[a:b] for a, b in offsets], offsets=offsets,
                      spans=None, recording=rec)


def _unit(vlm, sample, details: pd.DataFrame, masks, prompt: str, max_new_tokens: int, which: tuple[str, ...],
          map_layers: Sequence[int] | None) -> list[dict]:
    from vlmnb.engine.record import Record

    inp = vlm.prepare(sample.image, prompt=prompt)
    expected = details.baseline_text.iloc[0]
    gen = _replay(vlm, inp, expected)
    if gen is None:
        gen = vlm.generate(inp, max_new_tokens=max_new_tokens, record=Record(fractions=False, image_rows=True))
    rec = gen.recording
    if gen.text != expected:
        return [{"metric": "skipped", "text": "the baseline description was not reproduced "
                 "(non-deterministic decoding?)"}]
    rows: list[dict] = [{"metric": "description", "text": gen.text}]
    layers = list(rec.layers)
    for row in details.itertuples():
        base = {"detail": row.detail, "occurrence": int(row.occurrence)}
        detail = locate(gen, sample.image_id, row.detail, int(row.occurrence))
        if detail is None:
            rows.append({**base, "metric": "rejected", "text": "not mentioned in the description"})
            continue
        if len(detail_steps(detail.tokens, rec.n_steps, which[0])) == 0:
            rows.append({**base, "metric": "rejected", "text": "no recorded step for its tokens"})
            continue
        dm = masks(sample, detail)
        info = {**base, "phrase": detail.phrase, "char_start": detail.start, "char_end": detail.end,
                "tokens": ",".join(map(str, detail.tokens)), "mask_source": dm.source, "mask_note": dm.note,
                "mask_score": float(dm.score)}
        if not dm.ok:
            rows.append({**info, "metric": "rejected", "text": dm.note or "no mask"})
            continue
        info["mask_area"] = float(np.mean(dm.mask))
        near = within_one_token(inp.geometry, dm.mask)
        for k, variant in enumerate(which):
            steps = detail_steps(detail.tokens, rec.n_steps, variant)
            if len(steps) == 0:
                continue
            attention = rec.image_rows[:, steps].mean(axis=1)  # (layers, n_image)
            res = localize(inp.geometry, dm.mask, attention, near=near)
            vinfo = {**info, "rows": variant}
            rows.append({**vinfo, "metric": "chance", "value": res["chance"]})
            for li, layer in enumerate(layers):
                rows.append({**vinfo, "metric": "localized", "layer": int(layer), "value": float(res["localized"][li]),
                             "peak_token": int(res["peak"][li]), "peak_x": float(res["peak_x"][li]),
                             "peak_y": float(res["peak_y"][li])})
            if map_layers is not None and k == 0:
                pick = [li for li, layer in enumerate(layers) if layer in set(map_layers)]
                rows.append({**vinfo, "metric": "map",
                             "attention_map": attention[pick].mean(axis=0).astype(float).tolist()})
    return rows


def measure(vlm, samples: Sequence, details: pd.DataFrame, masks, store, *, prompt: str = "describe the image",
            max_new_tokens: int = 64, which: str | Sequence[str] = ROW_CHOICES,
            map_layers: Sequence[int] | None = None, progress: bool = True) -> pd.DataFrame:
    """Measure every fine detail: record each image's baseline attention again, tie the
    details to their tokens, get their masks, and apply :func:`localize`.

    The recording comes from one teacher-forced forward pass over the baseline text when its
    tokens provably are the model's greedy output (see ``_replay``), else from generating again.

    Use the sweep's ``prompt`` and ``max_new_tokens``: an image whose regenerated text differs
    from ``details.baseline_text`` (the text the details were found in) is skipped with a
    ``"skipped"`` row rather than measured on other tokens.

    ``which``: the row choices to measure (``"producing"``, ``"reading"``, or both: the
    recording covers every step, so both cost one generation); the first one decides which
    details have no recorded row and gives the ``map`` rows.

    Writes one unit per image into ``store`` (resumable) with tidy rows: ``metric="localized"``
    per layer (``value`` 0/1, ``peak_token``, ``peak_x``, ``peak_y``), ``"chance"``, ``"map"``
    (the attention averaged over ``map_layers``, for the gallery), each with its ``rows``
    choice; ``"description"`` (the regenerated text) and ``"rejected"`` / ``"skipped"`` rows
    whose ``text`` says why. Every row names its ``detail``, ``occurrence``, the mention
    (``phrase``, ``char_start``, ``char_end``, ``tokens``) and the mask (``mask_source``,
    ``mask_note``, ``mask_score``, ``mask_area`` as a fraction of the image).
    Returns the store's rows of this chapter.
    """
    from tqdm.auto import tqdm

    which = _as_which(which)
    by_id = {str(s.image_id): s for s in samples}
    groups = [(image_id, grp) for image_id, grp in details.groupby("image_id", sort=False) if image_id in by_id]
    for image_id, grp in tqdm(groups, desc="localising details", disable=not progress):
        key = {"model": vlm.name, "image_id": str(image_id), "config": CONFIG}
        if store.done(key):
            continue
        store.put(key, _unit(vlm, by_id[image_id], grp, masks, prompt, max_new_tokens, which, map_layers))
    store.flush()
    frame = store.frame()
    return frame[frame.config == CONFIG].reset_index(drop=True) if len(frame) else frame


# ============================================================================ analysis
def _detail_id(df: pd.DataFrame) -> pd.Series:
    return df.image_id.astype(str) + "/" + df.detail.astype(str) + "#" + df.occurrence.astype(int).astype(str)


def select(frame: pd.DataFrame, reject: RejectList | str | os.PathLike | None = None, min_score: float | None = None,
           max_area: float = 0.9, min_area: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep the details whose masks pass the filters; returns ``(kept rows, dropped table)``.

    Filters (applied after measuring, so editing the reject list needs no rerun): the reject
    list (a :class:`RejectList` or its path), ``min_score`` on the source's confidence (NaN
    scores, i.e. exact masks, always pass), and the mask's share of the image within
    ``[min_area, max_area]`` (a mask covering most of the image cannot test localisation).
    The dropped table has one row per detail with ``image_id, detail, occurrence, reason``,
    including the details rejected while measuring.
    """
    if not isinstance(reject, RejectList):
        reject = RejectList.load(reject)
    measured = frame[frame.metric.isin(["localized", "chance", "map"])].copy()
    dropped = []
    rej = frame[frame.metric == "rejected"]
    for r in rej.itertuples():
        dropped.append({"image_id": r.image_id, "detail": r.detail, "occurrence": int(r.occurrence), "reason": r.text})
    skipped = frame[frame.metric == "skipped"]
    for r in skipped.itertuples():
        dropped.append({"image_id": r.image_id, "detail": "(all)", "occurrence": -1, "reason": r.text})
    keep_ids = []
    if len(measured):
        per = measured[measured.metric == "chance"].drop_duplicates(["image_id", "detail", "occurrence"])
        for r in per.itertuples():
            reason = reject.reason(r.image_id, r.detail, int(r.occurrence))
            score = float(r.mask_score) if pd.notna(r.mask_score) else float("nan")
            if reason is None and min_score is not None and np.isfinite(score) and score < min_score:
                reason = f"mask score {score:.2f} < {min_score}"
            if reason is None and not (min_area <= float(r.mask_area) <= max_area):
                reason = f"mask covers {float(r.mask_area):.0%} of the image (kept: {min_area:.0%}-{max_area:.0%})"
            if reason is None:
                keep_ids.append(f"{r.image_id}/{r.detail}#{int(r.occurrence)}")
            else:
                dropped.append({"image_id": r.image_id, "detail": r.detail, "occurrence": int(r.occurrence),
                                "reason": reason})
        measured["detail_id"] = _detail_id(measured)
        measured = measured[measured.detail_id.isin(keep_ids)]
    return measured.reset_index(drop=True), pd.DataFrame(dropped, columns=["image_id", "detail", "occurrence", "reason"])


def _rows(kept: pd.DataFrame, metric: str, rows: str | None) -> pd.DataFrame:
    """``kept``'s rows of one metric for one row choice (``None``: the first one measured)."""
    sub = kept[kept.metric == metric]
    if "rows" not in sub.columns or sub.empty:
        return sub
    if rows is None:
        rows = next((w for w in ROW_CHOICES if (sub.rows == w).any()), sub.rows.iloc[0])
    return sub[sub.rows == rows]


def _summ(df: pd.DataFrame, by: str | list, value: str = "value", seed: int = 0) -> pd.DataFrame:
    from vlmnb.experiments.stats import summarize

    return summarize(df, by=by, value=value, seed=seed)


def accuracy_by_layer(kept: pd.DataFrame, rows: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Per layer: the share of details localised (``mean``) with a 95% bootstrap interval over
    details; ``rows``: "producing" or "reading" (default: "producing" when measured)."""
    loc = _rows(kept, "localized", rows)
    if loc.empty:
        return pd.DataFrame(columns=["layer", "mean", "ci_low", "ci_high", "n"])
    return _summ(loc.assign(layer=loc.layer.astype(int)), "layer", seed=seed)


def window_size(n_layers: int, size: int | str = "auto") -> int:
    """Layers per window: ``"auto"`` is the paper's share (10 of InternVL2's 80 layers, 4 of
    LLaVA-1.5's 32: an eighth of the depth), at least 1."""
    if size == "auto":
        return max(1, int(round(n_layers / 8)))
    size = int(size)
    if size < 1:
        raise ValueError(f"layer window must be >= 1, got {size}")
    return size


def layer_windows(n_layers: int, size: int | str = "auto") -> list[tuple[int, int]]:
    """Consecutive, non-overlapping windows ``(first, last)`` covering layers 0..n-1."""
    size = window_size(n_layers, size)
    return [(a, min(a + size, n_layers) - 1) for a in range(0, n_layers, size)]


def accuracy_by_window(kept: pd.DataFrame, n_layers: int, size: int | str = "auto", rows: str | None = None,
                       seed: int = 0) -> pd.DataFrame:
    """Accuracy averaged over each window of consecutive layers (the paper's Fig. 7 / A6).

    Per detail the 0/1 outcomes are averaged over the window's layers, then over details,
    with a 95% bootstrap interval over details. Columns: ``window`` ("a-b"), ``first``,
    ``last``, ``mean``, ``ci_low``, ``ci_high``, ``n``.
    """
    loc = _rows(kept, "localized", rows).copy()
    cols = ["window", "first", "last", "mean", "ci_low", "ci_high", "n"]
    if loc.empty:
        return pd.DataFrame(columns=cols)
    loc["detail_id"] = _detail_id(loc)
    out = []
    for a, b in layer_windows(n_layers, size):
        sub = loc[(loc.layer >= a) & (loc.layer <= b)]
        if sub.empty:
            continue
        per_detail = sub.groupby("detail_id").value.mean().reset_index().assign(window=f"{a}-{b}")
        s = _summ(per_detail, "window", seed=seed).iloc[0]
        out.append({"window": f"{a}-{b}", "first": a, "last": b, "mean": s["mean"], "ci_low": s["ci_low"],
                    "ci_high": s["ci_high"], "n": int(s["n"])})
    return pd.DataFrame(out, columns=cols)


def map_window(model_name: str, frame: pd.DataFrame, n_layers: int) -> tuple[tuple[int, int], str]:
    """The middle layers whose attention the gallery averages, and why: the paper's for its two
    models (20-40 for InternVL2-76B, 16-24 for LLaVA-1.5-7B), otherwise chapter 2's choice
    (:func:`vlmnb.experiments.sweep.choose_window`: the quarter of the layers with the most image attention
    in this model's baseline)."""
    from vlmnb.experiments.paper import LOCALIZATION, MODELS
    from vlmnb.experiments.sweep import choose_window

    for paper_name, entry in LOCALIZATION.items():
        hub = MODELS[paper_name]["hub_id"]
        if model_name in (hub, paper_name) or (paper_name.startswith("LLaVA") and model_name == "liuhaotian/llava-v1.5-7b"):
            return tuple(entry["mid_layers"]), f"the paper's middle layers for {paper_name}"
    return choose_window(model_name, frame, n_layers)


def chance(kept: pd.DataFrame, seed: int = 0) -> dict:
    """The chance level averaged over details: ``{"mean", "ci_low", "ci_high", "n"}``."""
    from vlmnb.experiments.stats import bootstrap_ci

    values = _rows(kept, "chance", None).value.to_numpy(dtype=float)
    est, lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": est, "ci_low": lo, "ci_high": hi, "n": int(np.isfinite(values).sum())}


def localization_claims(by_window: pd.DataFrame, chance_summary: dict, n_layers: int,
                        paper_accuracy: float = 0.73) -> pd.DataFrame:
    """The paper's Sec. 4.5 findings checked on this run (claim, paper, ours, held).

    Thresholds (stated, not tuned): "localised above chance" = the best window's 95% interval
    lies above the mean chance level; "peaks in the middle layers" = the best window is neither
    the first nor the last one and its centre lies between 20% and 80% of the depth; the peak
    accuracy is reported beside the paper's ~73% without a verdict (models and data differ).
    """
    if by_window.empty:
        return pd.DataFrame([{"claim": "fine details are localised", "paper": "", "ours": "no details measured",
                              "held": False}])
    best = by_window.loc[by_window["mean"].idxmax()]
    centre = (best["first"] + best["last"]) / 2
    rows = [
        {"claim": "fine details' attention peaks on them more often than chance",
         "paper": f"~{paper_accuracy:.0%} at the peak (InternVL2-76B) vs. chance (not reported)",
         "ours": f"{best['mean']:.2f} [{best['ci_low']:.2f}, {best['ci_high']:.2f}] in layers {best['window']} "
                 f"vs. chance {chance_summary['mean']:.2f}",
         "held": bool(best["ci_low"] > chance_summary["mean"])},
        {"claim": "localisation peaks in the middle layers",
         "paper": "rises in the mid layers (20-40 of 80), low early and late",
         "ours": f"best window {best['window']} of 0-{n_layers - 1}",
         "held": bool(0.2 * (n_layers - 1) <= centre <= 0.8 * (n_layers - 1)
                      and best["window"] not in (by_window.window.iloc[0], by_window.window.iloc[-1]))},
        {"claim": "peak localisation accuracy",
         "paper": f"~{paper_accuracy:.0%} (231 details, 68 COCO images)",
         "ours": f"{best['mean']:.2f} ({int(best['n'])} details)", "held": "n/a (different model and data)"},
    ]
    return pd.DataFrame(rows)


def rows_comparison(kept: pd.DataFrame, n_layers: int, size: int | str = "auto", seed: int = 0) -> pd.DataFrame:
    """Accuracy per layer window for each measured row choice side by side: one row per
    window, columns ``producing`` / ``reading`` as "mean [low, high]" strings."""
    if kept.empty or "rows" not in kept.columns:
        return pd.DataFrame(columns=["window"])
    out = None
    for choice in [w for w in ROW_CHOICES if (kept.rows == w).any()]:
        t = accuracy_by_window(kept, n_layers, size, rows=choice, seed=seed)
        col = t.assign(**{choice: [f"{m:.2f} [{lo:.2f}, {hi:.2f}]" for m, lo, hi in
                                    zip(t["mean"], t.ci_low, t.ci_high)]})[["window", choice]]
        out = col if out is None else out.merge(col, on="window", how="outer")
    return out if out is not None else pd.DataFrame(columns=["window"])


def paper_table(by_window: pd.DataFrame, chance_summary: dict, model_name: str, n_layers: int,
                n_details: int, n_images: int, size: int | str = "auto") -> pd.DataFrame:
    """This run beside the paper's two models: details, images, layers per window, the best
    window and its accuracy, the chance level (the paper reports none)."""
    from vlmnb.experiments.paper import LOCALIZATION, MODELS

    rows = []
    for name, entry in LOCALIZATION.items():
        depth = MODELS[name]["layers"]
        peak = entry.get("peak_accuracy")
        rows.append({"model": f"{name} (paper)", "details": entry["details"], "images": entry["images"],
                     "decoder layers": depth, "layers per window": entry["layer_window"],
                     "best window": "20-40 (mid layers)" if name.startswith("InternVL") else "mid layers (Fig. A6)",
                     "accuracy at best window": f"~{peak:.2f}" if peak is not None else "not stated (Fig. A6)",
                     "chance": "not reported"})
    if len(by_window):
        best = by_window.loc[by_window["mean"].idxmax()]
        acc = f"{best['mean']:.2f} [{best['ci_low']:.2f}, {best['ci_high']:.2f}]"
        where = str(best["window"])
    else:
        acc, where = "no details", "-"
    rows.append({"model": f"{model_name} (this run)", "details": n_details, "images": n_images,
                 "decoder layers": n_layers, "layers per window": window_size(n_layers, size),
                 "best window": where, "accuracy at best window": acc,
                 "chance": f"{chance_summary['mean']:.2f}" if np.isfinite(chance_summary.get("mean", np.nan)) else "-"})
    return pd.DataFrame(rows)


def closing_note(by_window: pd.DataFrame, chance_summary: dict, model_name: str, n_details: int,
                 n_images: int, paper_accuracy: float = 0.73) -> str:
    """A Markdown paragraph with this run's accuracy per layer window and chance, beside the
    paper's ~73% (written from the numbers, so it is right after every rerun)."""
    if by_window.empty:
        return (f"**On {model_name}** no fine detail survived to be measured ({n_details} details), so "
                f"this run says nothing about localisation; the paper reports ~{paper_accuracy:.0%} at "
                "its best window on InternVL2-76B.")
    windows = ", ".join(f"{r.window}: {r.mean:.2f}" for r in by_window.itertuples())
    best = by_window.loc[by_window["mean"].idxmax()]
    ratio = best["mean"] / chance_summary["mean"] if chance_summary["mean"] > 0 else float("nan")
    return (f"**On {model_name}** ({n_details} fine details in {n_images} images), the share of details whose "
            f"attention peak lies within one token of the detail's mask is, per layer window, {windows}. "
            f"The best window, layers {best['window']}, reaches {best['mean']:.2f} "
            f"(95% interval {best['ci_low']:.2f}-{best['ci_high']:.2f}), {ratio:.1f} times the chance level of "
            f"{chance_summary['mean']:.2f}. The paper reports ~{paper_accuracy:.0%} at its best window "
            "(layers 20-40 of 80, InternVL2-76B, 231 details in 68 COCO images) and no chance level.")


def gallery_items(frame: pd.DataFrame, kept: pd.DataFrame, samples: Sequence, masks, vlm, n: int = 4,
                  prompt: str = "describe the image") -> list[dict]:
    """Material for the Fig. 6 gallery: up to ``n`` kept details (at most two per image, in
    order) with image, geometry, mask, the map averaged over the ``map_layers`` of
    :func:`measure`, and the description with the detail's mention. Cheap: the image is only
    prepared again (for its geometry) and the mask asked of the source again."""
    maps = kept[kept.metric == "map"]
    if maps.empty:
        return []
    texts = frame[frame.metric == "description"].set_index("image_id").text
    by_id = {str(s.image_id): s for s in samples}
    items, per_image = [], Counter()
    for r in maps.itertuples():
        if len(items) >= n:
            break
        if per_image[r.image_id] >= 2 or r.image_id not in by_id or r.image_id not in texts.index:
            continue
        sample = by_id[r.image_id]
        geometry = vlm.prepare(sample.image, prompt=prompt).geometry
        tokens = tuple(int(t) for t in str(r.tokens).split(",") if t != "")
        detail = Detail(r.image_id, r.detail, int(r.occurrence), int(r.char_start), int(r.char_end), tokens,
                        str(texts[r.image_id]))
        items.append({"image": sample.image, "geometry": geometry, "mask": masks(sample, detail).mask,
                      "map": np.asarray(r.attention_map, dtype=float), "detail": r.detail, "phrase": detail.phrase,
                      "text": detail.text, "span": (detail.start, detail.end), "image_id": r.image_id})
        per_image[r.image_id] += 1
    return items
