"""Counts and articles in messages: `1 image`, `2 images`, `an int`."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`1 image`, `2 images` (`many`: the plural when it is not noun + "s")."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"


def with_article(noun: str) -> str:
    """`a float`, `an int` (by the first letter)."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"
