"""Which physical objects a description mentions: rule-based noun chunks, WordNet lemmas.

A small chunker splits the text at punctuation, prepositions, conjunctions, determiners and
verbs; the head of each noun chunk (its last noun, extended to a WordNet compound such as
``fire_hydrant`` when the words before it form one) is lemmatised (English irregular plurals
from :mod:`vlmnb.core.text`, WordNet's exception list, then suffix rules checked against
WordNet; lemminflect as a fall-back) and kept when one of its first WordNet senses is a
physical thing (artifact, animal, person, food, plant, natural object, body part). Closed
lists remove scenery (sky, ground, background, weather, light ...), picture words (image,
scene ...), positions (top, side, corner ...) and quantity words (group, pair, bunch ... keep
what they count). Attributes never become objects: only chunk heads do.
"""
from __future__ import annotations

import re
from functools import lru_cache

from vlmnb.core.text import IRREGULAR_SINGULARS
from vlmnb.judge.wordnet import WordNetNouns, wordnet

__all__ = ["extract_objects", "lemma_key", "NOUN_SYNONYMS"]

# WordNet lexicographer files whose senses are physical things.
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
# Informal or specific words read as the general one ("guys" -> "man"): the offline judge's own
# synonyms, applied to a word and to its singular. Plurals come from vlmnb.core.text; "people"
# and "folks" are here because WordNet lists them as nouns of their own ("peoples" -> person).
NOUN_SYNONYMS = {"people": "person", "folks": "person", "folk": "person", "kid": "child", "guy": "man",
                 "lady": "woman", "gentleman": "man"}
# Things named by a plural only: their lemma keeps the "s".
KEEP_PLURAL = {"glasses", "eyeglasses", "sunglasses", "scissors", "pants", "jeans", "trousers",
               "shorts", "headphones", "goggles", "binoculars", "tongs", "pliers", "clothes",
               "earphones", "earbuds", "leggings", "overalls", "pajamas", "pyjamas"}


# --------------------------------------------------------------------------------------
# lemmas
# --------------------------------------------------------------------------------------

# Physical things that WordNet files under communication or substance.
PHYSICAL_EXTRA = {"sign", "traffic_light", "street_sign", "poster", "menu", "newspaper", "magazine",
                  "map", "banner", "billboard", "label", "sticker", "paper", "letter", "card",
                  "ticket", "envelope", "mug", "photo", "photograph", "painting", "drawing",
                  "calendar", "book", "notebook", "document", "placard", "plaque", "crowd", "audience"}

# Singular candidates for a plural, tried in this order and kept only when WordNet knows them:
# the order decides ("axes" -> "ax", not "axe"), so these are not vlmnb.core.text's spelling rules.
_SUFFIX_RULES = (("ies", "y"), ("ves", "f"), ("ves", "fe"), ("ses", "s"), ("xes", "x"), ("zes", "z"),
                 ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("oes", "o"), ("es", "e"), ("s", ""))


def _noun_lemma(word: str, wn: WordNetNouns) -> str:
    """The singular WordNet lemma of a (possibly plural) noun, or the word itself."""
    w = word.lower().replace(" ", "_")
    if w in NOUN_SYNONYMS:
        return NOUN_SYNONYMS[w]
    if w in KEEP_PLURAL:
        return w
    for singular in (IRREGULAR_SINGULARS.get(w), wn.exceptions.get(w)):  # English's irregulars, then WordNet's
        if singular is not None and wn.is_noun(singular):
            return NOUN_SYNONYMS.get(singular, singular)
    if w.endswith("s") and not w.endswith("ss"):
        for suffix, repl in _SUFFIX_RULES:
            if w.endswith(suffix):
                cand = w[: len(w) - len(suffix)] + repl
                if cand and wn.is_noun(cand):
                    return NOUN_SYNONYMS.get(cand, cand)
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
    return max(wn.pos_counts(lemma).get("v", 0) for lemma in lemmas)


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
