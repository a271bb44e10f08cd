"""Small helpers for the book's prose: counts with the right plural.

Glued sentences read "1 run" and "2 runs", never "run(s)".
"""

from __future__ import annotations

__all__ = ["plural", "count"]


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """The noun for *n* items: ``singular`` for 1, else ``plural_form`` (default ``singular + "s"``).

    Only the last word is inflected by default (``"resting-state run"`` -> ``"resting-state runs"``).
    """
    n = int(n)
    if n == 1:
        return singular
    return plural_form if plural_form is not None else singular + "s"


def count(n: int, singular: str, plural_form: str | None = None) -> str:
    """``"1 run"``, ``"0 runs"``, ``"2 subjects"``."""
    return f"{int(n)} {plural(n, singular, plural_form)}"
