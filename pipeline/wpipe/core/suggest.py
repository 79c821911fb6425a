"""Suggestions for a misspelled name ("did you mean …?") and short listings of known names,
for error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

MAX_SUGGESTIONS = 3
CUTOFF = 0.6  # difflib's ratio below which a name is not suggested
MAX_LISTED = 20  # names listed in full before the rest are counted


def close_to(word: str, known: Iterable[str]) -> list[str]:
    """Up to three known names like `word`, best first: difflib's ratio at least 0.6 and
    within a tenth of the best (names sharing a long prefix are all 'close'); the last path
    part is compared too, so `e5` finds `cnn_lr1e-2/e05`."""
    known = list(dict.fromkeys(known))
    scored = {name: _ratio(word, name) for name in known}
    if "/" not in word:
        for name in known:
            scored[name] = max(scored[name], _ratio(word, name.rsplit("/", 1)[-1]))
    best = max(scored.values(), default=0.0)
    found = sorted((n for n, r in scored.items() if r >= max(CUTOFF, 0.9 * best)),
                   key=lambda n: -scored[n])  # fmt: skip
    return found[:MAX_SUGGESTIONS]


def _ratio(a: str, b: str) -> float:
    matcher = difflib.SequenceMatcher(None, a, b)
    return matcher.ratio() if matcher.real_quick_ratio() >= CUTOFF else 0.0


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
