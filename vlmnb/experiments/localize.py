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

The experiment's shape: :func:`run` measures the details into a result store (``measure`` is its
former name), :func:`select` keeps those with good masks, and :func:`claims` checks the paper's
findings; the analysis lives in :mod:`vlmnb.experiments.localization_stats` and is reachable here.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from vlmnb.core.text import word_forms
from vlmnb.engine.record import Record
from vlmnb.engine.vlm import Generation, token_offsets
from vlmnb.experiments.localization_stats import (ROW_CHOICES, accuracy_by_layer, accuracy_by_window, chance,
                                                  claims, closing_note, layer_windows, localization_claims,
                                                  map_window, paper_table, rows_comparison, select, window_size)
from vlmnb.experiments import localization_stats
from vlmnb.experiments.sweep import Config, descriptions
from vlmnb.experiments.sweep import run as run_sweep
from vlmnb.experiments.units import key, run_units
from vlmnb.judge import compare_many, get_judge

__all__ = [
    "Detail", "DetailMask", "MaskSource", "ToyMasks", "CocoMasks", "FirstOf", "mask_source", "RejectList",
    "find_mentions", "missed_objects", "fine_details", "locate", "detail_steps",
    "within_one_token", "chance_level", "localize", "run", "measure", "select", "accuracy_by_layer",
    "accuracy_by_window", "layer_windows", "window_size", "chance", "claims", "localization_claims",
    "replay", "gallery_items", "map_window", "rows_comparison", "paper_table", "closing_note", "ROW_CHOICES",
    "study", "LocalizationStudy",
]

CONFIG = "localization"  # the store's ``config`` column for this chapter's units


# ============================================================================ finding details
_ARTICLES = {"a", "an", "the", "some", "two", "three", "several", "many"}


def _phrase_pattern(words: Sequence[str]) -> re.Pattern:
    head = "|".join(re.escape(f) for f in word_forms(words[-1]))
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
from vlmnb.data import CocoMasks, DetailMask, FirstOf, MaskSource, RejectList, ToyMasks, mask_source  # noqa: E402,F401


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
def _as_which(which) -> tuple[str, ...]:
    which = (which,) if isinstance(which, str) else tuple(which)
    if not which:
        raise ValueError("which must name at least one of 'producing', 'reading'")
    for w in which:
        detail_steps([], 0, w)  # validates the name
    return which


def replay(vlm, inp, text: str):
    """The baseline's generation with attention recorded, from one teacher-forced forward pass.

    The text is tokenised again; the ids count as the generated ones only when they decode to
    the same text and every one of them is the model's greedy choice at its position (then
    greedy generation would have produced exactly these tokens, and the recorded rows are the
    same rows as during generation). Otherwise None: the caller generates again.
    """
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
    decoded, offsets = token_offsets(tokenizer, ids)
    if decoded != text:
        return None
    return Generation(text=decoded, token_ids=ids, tokens=[decoded[a:b] for a, b in offsets], offsets=offsets,
                      spans=None, recording=rec)


def _unit(vlm, sample, details: pd.DataFrame, masks, prompt: str, max_new_tokens: int, which: tuple[str, ...],
          map_layers: Sequence[int] | None) -> list[dict]:
    inp = vlm.prepare(sample.image, prompt=prompt)
    expected = details.baseline_text.iloc[0]
    gen = replay(vlm, inp, expected)
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


def run(vlm, samples: Sequence, details: pd.DataFrame, masks, store, *, prompt: str = "describe the image",
        max_new_tokens: int = 64, which: str | Sequence[str] = ROW_CHOICES,
        map_layers: Sequence[int] | None = None, progress: bool = True) -> pd.DataFrame:
    """Measure every fine detail: record each image's baseline attention again, tie the
    details to their tokens, get their masks, and apply :func:`localize`. One unit per image,
    through the store's resumable loop (:func:`vlmnb.experiments.units.run_units`).

    The recording comes from one teacher-forced forward pass over the baseline text when its
    tokens provably are the model's greedy output (see :func:`replay`), else from generating again.

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
    which = _as_which(which)
    by_id = {str(s.image_id): s for s in samples}
    groups = {str(image_id): grp for image_id, grp in details.groupby("image_id", sort=False) if image_id in by_id}

    def compute(model, image_id, config):
        return _unit(vlm, by_id[image_id], groups[image_id], masks, prompt, max_new_tokens, which, map_layers)

    run_units(store, [key(vlm.name, image_id, CONFIG) for image_id in groups], compute, progress=progress,
              desc="localising details")
    frame = store.frame()
    return frame[frame.config == CONFIG].reset_index(drop=True) if len(frame) else frame


#: the former name of :func:`run`
measure = run


def gallery_items(frame: pd.DataFrame, kept: pd.DataFrame, samples: Sequence, masks, vlm, n: int = 4,
                  prompt: str = "describe the image") -> list[dict]:
    """Material for the Fig. 6 gallery: up to ``n`` kept details (at most two per image, in
    order) with image, geometry, mask, the map averaged over the ``map_layers`` of
    :func:`run`, and the description with the detail's mention. Cheap: the image is only
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


@dataclass
class LocalizationStudy:
    """Chapter 3's experiment on one model: the sweep's rows, the fine details found, their
    measurements, the details kept, accuracy by layer and by window of layers, the chance level,
    the layers the gallery maps average (and why), and the store of the measurements."""

    frame: pd.DataFrame
    details: pd.DataFrame
    measured: pd.DataFrame
    kept: pd.DataFrame
    by_layer: pd.DataFrame
    by_window: pd.DataFrame
    chance: dict
    n_kept: int
    map_window: tuple[int, int]
    why: str
    detail_store: Any

    def claims(self, n_layers: int, paper_accuracy: float | None = None) -> pd.DataFrame:
        """:func:`claims` of this study."""
        kw = {} if paper_accuracy is None else {"paper_accuracy": paper_accuracy}
        return claims(self.by_window, self.chance, n_layers, **kw)


def study(vlm, samples: Sequence, sweep_store, detail_store: Callable[[tuple[int, int]], Any], *, judge: Any = None,
          masks: Any = "auto", images: Any = "toy", mask_cache: str | None = None, which: str = "producing",
          layer_window: int | str = "auto", map_window: tuple[int, int] | str = "auto", reject: Any = None,
          prompt: str = "describe the image", max_new_tokens: int = 64) -> LocalizationStudy:
    """Chapter 3's steps on ``vlm``: the baseline and ``img->gen`` descriptions (into
    ``sweep_store``), the fine details lost without direct access to the image, the window of
    layers the gallery maps average (``"auto"``: :func:`map_window`), every detail measured for both
    row choices (into ``detail_store(map_window)``: the measurements' store depends on the window),
    the details kept (:func:`select`, ``reject``) and accuracy by layer and by window for ``which``."""
    frame = run_sweep(vlm, samples, [Config("baseline"), Config("img->gen")], sweep_store, prompt=prompt,
                      max_new_tokens=max_new_tokens)
    details = fine_details(frame, judge=judge)
    if map_window == "auto":
        map_window, why = localization_stats.map_window(vlm.name, frame, vlm.num_layers)
    else:
        why = "given as a parameter"
    map_window = tuple(map_window)
    source = mask_source(masks, images=images, cache_dir=mask_cache)
    store = detail_store(map_window)
    both = [which] + [w for w in ROW_CHOICES if w != which]
    measured = run(vlm, samples, details, source, store, prompt=prompt, max_new_tokens=max_new_tokens, which=both,
                   map_layers=range(map_window[0], map_window[1] + 1))
    kept, _ = select(measured, reject=reject)
    n_kept = kept[kept.metric == "chance"].drop_duplicates(["image_id", "detail", "occurrence"]).shape[0]
    return LocalizationStudy(frame, details, measured, kept, accuracy_by_layer(kept, rows=which),
                             accuracy_by_window(kept, vlm.num_layers, layer_window, rows=which), chance(kept),
                             n_kept, map_window, why, store)
