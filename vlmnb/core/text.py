"""English noun forms, defined once for COCO category matching, finding mentions and judging."""
from __future__ import annotations

import re

# singular -> plural where the spelling rules do not apply (or the word does not change)
IRREGULAR_PLURALS: dict[str, str] = {
    "man": "men", "woman": "women", "child": "children", "person": "people",
    "gentleman": "gentlemen", "policeman": "policemen", "mouse": "mice", "knife": "knives",
    "calf": "calves", "ox": "oxen", "goose": "geese", "sheep": "sheep", "people": "people",
    "cattle": "cattle", "skis": "skis", "scissors": "scissors", "luggage": "luggage", "crowd": "crowds",
    "leaf": "leaves", "shelf": "shelves", "foot": "feet", "tooth": "teeth", "wolf": "wolves",
    "loaf": "loaves",
}
IRREGULAR_SINGULARS: dict[str, str] = {p: s for s, p in IRREGULAR_PLURALS.items() if p != s}


def plural(phrase: str) -> str:
    """Plural of a noun phrase (its last word), by English spelling rules plus exceptions."""
    *head, last = phrase.split()
    if last in IRREGULAR_PLURALS:
        last = IRREGULAR_PLURALS[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*head, last])


def word_forms(word: str) -> list[str]:
    """Singular and plural spellings one (lower-case) word may take, longest first."""
    forms = {word}
    if word in IRREGULAR_PLURALS:
        forms.add(IRREGULAR_PLURALS[word])
    if word in IRREGULAR_SINGULARS:
        forms.add(IRREGULAR_SINGULARS[word])
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
