"""One judgement and its arithmetic: :class:`JudgeResult`, :func:`score` and :func:`prf`.

Counts are always recomputed here from the object lists and the matched pairs; a judge's own
arithmetic is never used. A judge *failure* (endpoint down, unparseable answer) is a result
with ``ok=False`` and NaN scores, never an F1 of 0.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

__all__ = ["JudgeResult", "score", "prf"]


@dataclass
class JudgeResult:
    """The comparison of one (original, modified) pair of descriptions.

    ``matched`` holds ``(original_object, modified_object)`` pairs, one to one.
    ``tp = len(matched)``, ``fn = len(original_objects) - tp``, ``fp = len(modified_objects) - tp``.

    Conventions for the edge cases (so that averages over many pairs stay meaningful):

    * both lists empty: precision = recall = F1 = 1.0 (nothing was there, nothing was lost
      or invented);
    * precision with no modified objects, or recall with no original objects, is 1.0 (vacuous);
      F1 is 0.0 whenever ``tp == 0`` and at least one list is non-empty;
    * a judge failure (``ok=False``): counts are ``None`` and precision/recall/F1 are NaN,
      ``error`` says why. Drop or report failures; never average them as zeros.
    """

    original_objects: list[str]
    modified_objects: list[str]
    matched: list[tuple[str, str]]
    tp: int | None
    fp: int | None
    fn: int | None
    precision: float
    recall: float
    f1: float
    judge: str
    rationale: str | None = None
    ok: bool = True
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (matched pairs become 2-element lists)."""
        d = asdict(self)
        d["matched"] = [list(p) for p in self.matched]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JudgeResult":
        """The inverse of :meth:`to_dict` (also reads dicts written before ``warnings`` existed)."""
        d = dict(d)
        d["matched"] = [tuple(p) for p in d.get("matched", [])]
        d.setdefault("warnings", [])
        return cls(**d)

    @classmethod
    def failure(cls, judge: str, error: str, rationale: str | None = None) -> "JudgeResult":
        """A failed comparison: no counts, NaN scores."""
        nan = float("nan")
        return cls([], [], [], None, None, None, nan, nan, nan, judge,
                   rationale=rationale, ok=False, error=error)


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts, with the conventions of :class:`JudgeResult`."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    if tp == 0:
        f1 = 1.0 if fp == 0 and fn == 0 else 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def _norm(name: str) -> str:
    return " ".join(str(name).lower().split())


def score(original_objects: Iterable[str], modified_objects: Iterable[str],
          matched: Iterable[Sequence[str]], judge: str, rationale: str | None = None,
          warnings: list[str] | None = None, dedupe: bool = True) -> JudgeResult:
    """Build a :class:`JudgeResult` from two object lists and proposed matches.

    With ``dedupe`` (the default, open-vocabulary judges) each list is de-duplicated case- and
    space-insensitively, first spelling kept; without it the lists are multisets (the toy's
    "two red circles" are two objects). A proposed match is kept only if both names are still
    available in their lists; dropped matches are reported in ``warnings``. The counts come
    from what is kept, never from the judge.
    """
    warnings = list(warnings or [])

    def clean(items: Iterable[str], which: str) -> list[str]:
        out, seen = [], set()
        for item in items:
            if not isinstance(item, str) or not item.strip():
                warnings.append(f"dropped non-string or empty {which} object {item!r}")
                continue
            key = _norm(item)
            if key not in seen or not dedupe:
                seen.add(key)
                out.append(item.strip())
        return out

    orig = clean(original_objects, "original")
    mod = clean(modified_objects, "modified")
    free_o = Counter(_norm(o) for o in orig)
    free_m = Counter(_norm(m) for m in mod)
    spelling_o = {_norm(o): o for o in reversed(orig)}
    spelling_m = {_norm(m): m for m in reversed(mod)}
    pairs = []
    for pair in matched:
        try:
            o, m = pair
            ko, km = _norm(o), _norm(m)
        except (TypeError, ValueError, AttributeError):
            warnings.append(f"dropped malformed match {pair!r}")
            continue
        if ko not in spelling_o or km not in spelling_m:
            warnings.append(f"dropped match {o!r}->{m!r}: not in the object lists")
            continue
        if free_o[ko] == 0 or free_m[km] == 0:
            warnings.append(f"dropped match {o!r}->{m!r}: object already matched")
            continue
        free_o[ko] -= 1
        free_m[km] -= 1
        pairs.append((spelling_o[ko], spelling_m[km]))
    tp = len(pairs)
    fp, fn = len(mod) - tp, len(orig) - tp
    p, r, f = prf(tp, fp, fn)
    return JudgeResult(orig, mod, pairs, tp, fp, fn, p, r, f, judge,
                       rationale=rationale, warnings=warnings)
