"""Noun phrases from a caption: spaCy's `en_core_web_sm` noun chunks when installed, else a small
stopword heuristic.

The fallback (used when spaCy or its English model is missing, e.g. offline) lowercases the
caption, splits it into words, and keeps each maximal run of words that are not stopwords,
captioning fillers ("picture", "view") or common caption verbs ("sitting", "is"): "a red car
parked next to a tall building" -> ["red car", "tall building"]. Runs longer than four words are
cut to their last four (the head noun comes last in English noun phrases).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

MAX_WORDS = 4
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")
_DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "some", "its", "their", "his",
                "her", "two", "three", "several", "many"}
_STOPWORDS = _DETERMINERS | {
    # function words
    "of", "in", "on", "at", "to", "with", "and", "or", "for", "from", "by", "near", "next",
    "under", "over", "behind", "above", "below", "into", "onto", "up", "down", "out", "off",
    "there", "here", "it", "is", "are", "was", "were", "be", "been", "being", "has", "have",
    "which", "who", "while", "as", "very", "other", "each", "one", "front", "top", "side",
    "middle", "back", "left", "right", "around", "through", "along", "against", "between",
    # captioning fillers
    "picture", "image", "photo", "photograph", "view", "close", "closeup", "shot", "scene",
    "background", "foreground", "blurry", "arafed", "araffe", "arafe",
    # common caption verbs
    "sitting", "standing", "holding", "looking", "walking", "riding", "parked", "laying",
    "lying", "flying", "playing", "wearing", "hanging", "covered", "filled", "made", "shown",
    "taken", "seen", "driving", "eating", "running", "going", "getting", "doing", "that's",
}


@lru_cache(maxsize=1)
def _spacy_model() -> Any | None:
    try:
        import spacy

        return spacy.load("en_core_web_sm", disable=["ner", "lemmatizer"])
    except (ImportError, OSError):  # spaCy absent, or its English model not downloaded
        return None


def heuristic_noun_phrases(caption: str) -> list[str]:
    """The stopword fallback (see the module docstring); phrases in caption order, unique."""
    phrases: list[str] = []
    run: list[str] = []
    for word in [*_WORD.findall(caption.lower()), "."]:
        if word in _STOPWORDS or word == ".":
            if run:
                phrases.append(" ".join(run[-MAX_WORDS:]))
            run = []
        elif len(word) > 1:
            run.append(word)
    return list(dict.fromkeys(phrases))


def spacy_noun_phrases(nlp: Any, caption: str) -> list[str]:
    """spaCy noun chunks without leading determiners, lowercased, unique."""
    phrases = []
    for chunk in nlp(caption).noun_chunks:
        words = [t.text.lower() for t in chunk if not (t.i == chunk.start and t.dep_ == "det")]
        words = [w for w in words if w not in _DETERMINERS]
        if words:
            phrases.append(" ".join(words[-MAX_WORDS:]))
    return list(dict.fromkeys(phrases))


def noun_phrases(caption: str, use_spacy: bool = True) -> list[str]:
    """Noun phrases of one caption: spaCy when available (and allowed), else the heuristic."""
    nlp = _spacy_model() if use_spacy else None
    if nlp is None:
        return heuristic_noun_phrases(caption)
    return spacy_noun_phrases(nlp, caption)


def spacy_available() -> bool:
    return _spacy_model() is not None
