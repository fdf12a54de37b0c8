"""A small rule-based English lemmatiser for action class names (no corpus data needed).

It only has to be consistent: two names are compared by the set of their content lemmas, so "CliffDiving",
"cliff diving" and Kinetics' "diving cliff" all become {cliff, dive}.  Rules: split camelCase and
non-letters, lowercase, map a few irregular forms, strip plural -s/-es/-ies and gerund -ing (undoubling
"running" -> "run", restoring a final e for short consonant-vowel-consonant stems: "making" -> "make").
"""

from __future__ import annotations

import re

IRREGULAR = {
    "doing": "do", "does": "do", "did": "do", "done": "do", "going": "go", "went": "go", "ran": "run",
    "threw": "throw", "thrown": "throw", "lying": "lie", "tying": "tie", "dying": "die", "men": "man",
    "women": "woman", "people": "person", "children": "child", "feet": "foot", "teeth": "tooth",
    "knives": "knife", "leaves": "leaf", "shelves": "shelf", "clothes": "clothes", "dishes": "dish",
    "news": "news", "gymnastics": "gymnastics", "athletics": "athletics", "this": "this", "is": "is",
    "bus": "bus", "gas": "gas", "dress": "dress", "glass": "glass", "grass": "grass", "chess": "chess",
    "pass": "pass", "kiss": "kiss", "bring": "bring", "sing": "sing", "swing": "swing", "ring": "ring",
    "string": "string", "king": "king", "wing": "wing", "thing": "thing", "spring": "spring",
    "ceiling": "ceiling", "ping": "ping", "skiing": "ski",
}
STOPWORDS = {"a", "an", "the", "of", "on", "in", "with", "and", "to", "for", "at", "into", "from", "by",
             "or", "up", "play", "do", "someone", "something", "one", "s"}
VOWELS = set("aeiou")


def split_words(name: str) -> list[str]:
    name = re.sub(r"\([^)]*\)", " ", name)  # Kinetics qualifiers: "skiing (not slalom or crosscountry)"
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name)
    return [w.lower() for w in re.split(r"[^A-Za-z]+", spaced) if w]


def _needs_e(stem: str) -> bool:
    # Short consonant-vowel-consonant stems lost an e: mak(e), div(e), rid(e), shav(e), skat(e).
    return (len(stem) <= 5 and len(stem) >= 3 and stem[-1] not in VOWELS | set("wxy")
            and stem[-2] in VOWELS and stem[-3] not in VOWELS) or stem.endswith(("c", "v", "z", "dg"))


def lemmatize_word(word: str) -> str:
    w = word.lower()
    if w in IRREGULAR:
        return IRREGULAR[w]
    if w.endswith("ing") and len(w) > 5:
        stem = w[:-3]
        if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in VOWELS | set("lsz"):
            return stem[:-1]                      # running -> run, mopping -> mop
        if re.search(r"[^aeiou][bcdfgkpt]l$", stem):
            return stem + "e"                      # juggling -> juggle, tickling -> tickle
        return stem + "e" if _needs_e(stem) else stem
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zes")) and len(w) > 4:
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


def lemmas(name: str) -> frozenset[str]:
    """Content lemmas of a class name (stop words and generic verbs like 'playing' dropped)."""
    words = [lemmatize_word(w) for w in split_words(name)]
    content = frozenset(w for w in words if w not in STOPWORDS)
    return content or frozenset(words)


def match_keys(name: str) -> tuple[frozenset[str], str]:
    """Keys under which two names match: their content-lemma set, and their words run together
    ("Shotput" = "shot put")."""
    return lemmas(name), "".join(split_words(name))
