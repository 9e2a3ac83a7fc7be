"""Exact object matching between toy descriptions (the closed-vocabulary judge) and description quality.

The paper's judge lists the physical objects of two descriptions and matches them, ignoring
attributes and positions. For the toy the vocabulary is closed, so the same comparison is exact:
an object is its *name*, colour + shape ("red circle"); size and position are ignored, and the
two lists are matched as multisets (two red circles on one side match at most two on the other).

Convention: when both descriptions name no object, precision, recall and F1 are all 1.0 (nothing
was lost or invented); when only one side is empty, the undefined ratio is 0.0.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vlmnb.toy.scenes import ToyObject, describe, parse_description


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    if tp + fp + fn == 0:
        return 1.0, 1.0, 1.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@dataclass
class ObjectMatch:
    """Objects of an original and a modified description and how they match (multiset on names)."""

    original_objects: list[str]
    modified_objects: list[str]
    matched: list[tuple[str, str]] = field(default_factory=list)
    tp: int = 0
    fp: int = 0
    fn: int = 0
    precision: float = 1.0
    recall: float = 1.0
    f1: float = 1.0


def _match_keys(original: list, modified: list, key) -> tuple[list, int, int, int]:
    remaining = Counter(key(o) for o in modified)
    matched = []
    for o in original:
        k = key(o)
        if remaining[k] > 0:
            remaining[k] -= 1
            matched.append(o)
    tp = len(matched)
    return matched, tp, len(modified) - tp, len(original) - tp


def match_objects(original: str, modified: str) -> ObjectMatch:
    """Match the objects named in ``original`` and ``modified`` (colour + shape, as multisets).

    Recall is the share of the original's objects still named in the modified description,
    precision the share of the modified description's objects that were in the original.
    """
    orig = [o.name for o in parse_description(original)]
    mod = [o.name for o in parse_description(modified)]
    matched, tp, fp, fn = _match_keys(orig, mod, key=lambda n: n)
    p, r, f = _prf(tp, fp, fn)
    return ObjectMatch(orig, mod, [(n, n) for n in matched], tp, fp, fn, p, r, f)


def _full_key(o: ToyObject) -> tuple[str, str, str, str]:
    return (o.size, o.color, o.shape, o.cell)


@dataclass
class DescriptionScore:
    """A generated description against the ground-truth objects, with full attributes."""

    exact: bool
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float


def score_description(prediction: str, truth: list[ToyObject] | str) -> DescriptionScore:
    """Exact match (same objects with all attributes, in reading order, nothing else) and object
    P/R/F1 where an object counts only if size, colour, shape and cell all match."""
    gold = parse_description(truth) if isinstance(truth, str) else list(truth)
    pred = parse_description(prediction)
    _, tp, fp, fn = _match_keys([_full_key(o) for o in gold], [_full_key(o) for o in pred], key=lambda k: k)
    p, r, f = _prf(tp, fp, fn)
    exact = bool(gold) and prediction.strip().lower() == describe(gold)
    return DescriptionScore(exact, tp, fp, fn, p, r, f)


def description_quality(predictions: list[str], truths: list) -> dict[str, float]:
    """Exact-match rate and micro-averaged object precision/recall/F1 (full attributes) over a set."""
    scores = [score_description(p, t) for p, t in zip(predictions, truths, strict=True)]
    tp = sum(s.tp for s in scores)
    fp = sum(s.fp for s in scores)
    fn = sum(s.fn for s in scores)
    p, r, f = _prf(tp, fp, fn)
    names = [match_objects(t if isinstance(t, str) else describe(t), pr) for pr, t in zip(predictions, truths)]
    ntp = sum(m.tp for m in names)
    nfp = sum(m.fp for m in names)
    nfn = sum(m.fn for m in names)
    np_, nr, nf = _prf(ntp, nfp, nfn)
    out = {"n": len(scores), "exact": sum(s.exact for s in scores) / max(1, len(scores)),
           "object_precision": p, "object_recall": r, "object_f1": f,
           "name_precision": np_, "name_recall": nr, "name_f1": nf}
    # which attributes the errors are in: F1 when objects are keyed by a subset of attributes
    for label, attrs in (("color_cell", ("color", "cell")), ("shape_cell", ("shape", "cell")),
                         ("size_cell", ("size", "cell")), ("cell", ("cell",))):
        key = lambda o, attrs=attrs: tuple(getattr(o, a) for a in attrs)  # noqa: E731
        counts = [_match_keys([key(o) for o in (parse_description(t) if isinstance(t, str) else t)],
                              [key(o) for o in parse_description(pr)], key=lambda k: k)[1:]
                  for pr, t in zip(predictions, truths)]
        out[f"{label}_f1"] = _prf(*(sum(c[i] for c in counts) for i in range(3)))[2]
    return out

