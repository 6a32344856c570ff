"""Counts as English: "1 worker", "2 workers", "1 task waiting"."""

from __future__ import annotations

__all__ = ["counted"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """n and noun, the noun plural unless n is 1 (`plural` for nouns not made with an s).

    >>> counted(1, "worker"), counted(2, "worker"), counted(0, "child", "children")
    ('1 worker', '2 workers', '0 children')
    """
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
