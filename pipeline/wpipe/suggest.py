"""Suggestions for a misspelled name ("did you mean …?") and short listings of known names,
for error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

MAX_SUGGESTIONS = 3
MAX_LISTED = 20  # names listed in full before the rest are counted


def close_to(word: str, known: Iterable[str]) -> list[str]:
    """Up to three known names like `word` (difflib's ratio, best first); the last path part
    is compared too, so `e5` finds `cnn_lr1e-2/e05`."""
    known = list(dict.fromkeys(known))
    found = difflib.get_close_matches(word, known, n=MAX_SUGGESTIONS, cutoff=0.6)
    if len(found) < MAX_SUGGESTIONS and "/" not in word:
        by_leaf: dict[str, list[str]] = {}
        for name in known:
            by_leaf.setdefault(name.rsplit("/", 1)[-1], []).append(name)
        for leaf in difflib.get_close_matches(word, list(by_leaf), n=MAX_SUGGESTIONS, cutoff=0.75):
            found += [n for n in by_leaf[leaf] if n not in found]
    return found[:MAX_SUGGESTIONS]


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """` (did you mean a, b?)`, or "" when nothing is close."""
    found = close_to(word, known)
    return f" (did you mean {' or '.join(found)}?)" if found else ""


def listing(names: Iterable[str], limit: int = MAX_LISTED) -> str:
    """`a, b, c` — past `limit` names, the first ones and how many more."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])}, … and {len(names) - limit} more"
