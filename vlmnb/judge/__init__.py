"""Object-level comparison of two image descriptions: how much of the original survives.

Given an *original* description and a *modified* one (for example the same model's answer
under an attention knockout), a judge lists the physical objects mentioned in each, matches
the two lists one to one, and counts

* ``tp`` — objects in both descriptions (matched pairs),
* ``fn`` — objects only in the original (lost),
* ``fp`` — objects only in the modified description (made up),

from which precision, recall and F1 follow. Four judges share one interface
(``judge.compare(original, modified) -> JudgeResult``):

* :class:`LLMJudge` — an LLM on any OpenAI-compatible endpoint, the protocol of Kaduri et al.
  (Sec. 4.2, App. B) in this project's own prompt, with a persistent :class:`JudgeCache`;
* :class:`OfflineJudge` — no endpoint, no network: nouns, lemmas, WordNet, then sentence
  embeddings;
* :class:`ExactJudge` — the toy scenes' closed vocabulary (delegates to ``vlmnb.toy.metrics``);
* any object with ``name``, ``model``, ``version`` and ``compare``.

Counts are always recomputed from the object lists and the matched pairs; a judge's own
arithmetic is never used. A judge *failure* (endpoint down, unparseable answer) is a result
with ``ok=False`` and NaN scores, never an F1 of 0.

Modules (each imports only its siblings below it, never this package):

* :mod:`~vlmnb.judge.result` — :class:`JudgeResult`, :func:`score`, :func:`prf`;
* :mod:`~vlmnb.judge.exact` — :class:`ExactJudge`;
* :mod:`~vlmnb.judge.cache` — :class:`JudgeCache`;
* :mod:`~vlmnb.judge.llm` — the LLM prompt, schema, answer parser and :class:`LLMJudge`;
* :mod:`~vlmnb.judge.wordnet`, :mod:`~vlmnb.judge.extract`, :mod:`~vlmnb.judge.offline` —
  WordNet, object extraction, matching and :class:`OfflineJudge`;
* :mod:`~vlmnb.judge.resolve` — the :class:`Judge` protocol, :func:`get_judge`, :func:`compare`;
* :mod:`~vlmnb.judge.agreement` — labelled pairs, agreement tables, toy edit pairs.

Importing this package loads neither torch nor the sentence model; they load on first use.
"""
from __future__ import annotations

from vlmnb.judge.agreement import (
    TOY_EDITS, agreement_table, load_labelled, markdown_table, object_agreement, toy_agreement,
    toy_edit_pairs,
)
from vlmnb.judge.cache import JudgeCache, default_cache_path
from vlmnb.judge.exact import ExactJudge
from vlmnb.judge.extract import extract_objects, lemma_key
from vlmnb.judge.llm import (
    JUDGE_EXAMPLES, JUDGE_INSTRUCTIONS, JUDGE_SCHEMA, PROMPT_VERSION, JudgeAnswerError, LLMJudge,
    build_messages, parse_judge_answer, user_message,
)
from vlmnb.judge.offline import OfflineJudge
from vlmnb.judge.resolve import Judge, compare, compare_many, default_judge, get_judge
from vlmnb.judge.result import JudgeResult, prf, score

__all__ = [
    "JudgeResult", "score", "prf", "compare", "compare_many", "default_judge", "get_judge", "Judge",
    "ExactJudge", "LLMJudge", "OfflineJudge", "JudgeCache", "default_cache_path",
    "parse_judge_answer", "JudgeAnswerError", "load_labelled", "agreement_table", "object_agreement",
    "PROMPT_VERSION", "JUDGE_SCHEMA", "JUDGE_INSTRUCTIONS", "JUDGE_EXAMPLES", "build_messages",
    "user_message", "toy_edit_pairs", "toy_agreement", "TOY_EDITS", "markdown_table",
    "extract_objects", "lemma_key",
]
