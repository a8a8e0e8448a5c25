"""Counts, articles and suggestions in messages: `1 image`, `2 images`, `an int`, `(did you mean
'points_per_side'?)`."""

from __future__ import annotations

from collections.abc import Iterable


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 image`, `2 images` (`many`: the plural when it is not noun + "s")."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def with_article(noun: str) -> str:
    """`a float`, `an int` (by the first letter)."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def did_you_mean(word: object, choices: Iterable[object]) -> str:
    """` (did you mean 'points_per_side'?)` for the closest of `choices` to `word` (difflib's
    ratio at least 0.6, as `difflib.get_close_matches`), else `""`: appended to the one-line
    error that lists the valid names, it turns a typo into its fix."""
    import difflib

    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), names, n=1)
    if not close:  # a case slip ("ADE20K") is one edit away in meaning, not in letters
        lowered = {n.lower(): n for n in names}
        close = [lowered[str(word).lower()]] if str(word).lower() in lowered else []
    return f" (did you mean {close[0]!r}?)" if close and close[0] != str(word) else ""
