"""Which judge to use, and comparing with it: the :class:`Judge` protocol, :func:`get_judge`,
:func:`default_judge`, :func:`compare` and :func:`compare_many`."""
from __future__ import annotations

import os
from typing import Any, Iterable, Protocol

from vlmnb.judge.exact import ExactJudge
from vlmnb.judge.llm import LLMJudge
from vlmnb.judge.offline import OfflineJudge
from vlmnb.judge.result import JudgeResult
from vlmnb.core.progress import progress_bar as tqdm

__all__ = ["Judge", "default_judge", "get_judge", "compare", "compare_many"]


class Judge(Protocol):
    """What every judge offers: a ``name``, a ``model``, a ``version`` (part of the cache key)
    and ``compare(original, modified) -> JudgeResult``."""

    name: str
    model: str
    version: str

    def compare(self, original: str, modified: str) -> JudgeResult:
        """Compare the objects of two descriptions (see :class:`JudgeResult` for the scores)."""
        ...


def _llm_configured() -> bool:
    return any(os.environ.get(k) for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VLMNB_JUDGE_MODEL"))


def default_judge() -> "Judge":
    """An :class:`LLMJudge` when an endpoint is configured (``OPENAI_API_KEY``,
    ``OPENAI_BASE_URL`` or ``VLMNB_JUDGE_MODEL`` set), else an :class:`OfflineJudge`."""
    if _llm_configured():
        return LLMJudge(model=os.environ.get("VLMNB_JUDGE_MODEL") or "gpt-4o")
    return OfflineJudge()


def get_judge(judge: Any = None) -> "Judge":
    """Resolve ``None`` (default judge), a name (``"exact"``, ``"offline"``, ``"llm"``) or a judge object."""
    if judge is None:
        return default_judge()
    if isinstance(judge, str):
        key = judge.lower()
        if key == "exact":
            return ExactJudge()
        if key == "offline":
            return OfflineJudge()  # cheap: WordNet and the sentence model are loaded once per process
        if key == "llm":
            return LLMJudge(model=os.environ.get("VLMNB_JUDGE_MODEL") or "gpt-4o")
        raise ValueError(f"unknown judge {judge!r}: use 'exact', 'offline', 'llm' or a judge object")
    if not callable(getattr(judge, "compare", None)):
        raise TypeError(f"{judge!r} is not a judge: it needs a compare(original, modified) method")
    return judge


def compare(original: str, modified: str, judge: Any = None) -> JudgeResult:
    """Compare two descriptions object by object; see :class:`JudgeResult` for the scores.

    ``judge`` is a judge object, a name (``"exact"``, ``"offline"``, ``"llm"``) or ``None``
    for :func:`default_judge`.
    """
    return get_judge(judge).compare(original, modified)


def compare_many(pairs: Iterable[tuple[str, str]], judge: Any = None, progress: bool = True,
                 workers: int = 1) -> list[JudgeResult]:
    """:func:`compare` over many ``(original, modified)`` pairs, in order, with a progress bar.

    ``workers > 1`` runs that many comparisons at once in threads (useful for LLM endpoints;
    the cache is safe with concurrent writers).
    """
    j = get_judge(judge)
    pairs = list(pairs)
    bar = tqdm(total=len(pairs), desc=f"judge ({j.name})", disable=not progress)
    try:
        if workers <= 1:
            out = []
            for o, m in pairs:
                out.append(j.compare(o, m))
                bar.update(1)
            return out
        from concurrent.futures import ThreadPoolExecutor

        def one(pair):
            r = j.compare(*pair)
            bar.update(1)
            return r

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, pairs))
    finally:
        bar.close()
