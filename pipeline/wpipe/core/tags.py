"""Hyperparameters read from folder and file names: `runs/lr1e-2_dropout0.6/e05.h5` ->
lr=0.01, dropout=0.6, epoch=5 (docs: comparing). Pure functions."""

from __future__ import annotations

import re
from pathlib import PurePath

NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# A token is a key glued to a number (`lr1e-2`, `dropout0.6`, `e05`); a token that is only a
# number belongs to the token before it (`l2_1e-3`).
_GLUED = re.compile(rf"^(?P<key>[A-Za-z][A-Za-z]*?)(?P<value>{NUMBER})$")
_NUMBER = re.compile(rf"^{NUMBER}$")
_SPLIT = re.compile(r"[_\s]+|(?<![eE])-|=|\.(?!\d)")
ALIASES = {"e": "epoch", "ep": "epoch", "epoch": "epoch", "epochs": "epoch", "s": "step",
           "step": "step", "it": "step", "iter": "step"}  # fmt: skip
MODEL_SUFFIXES = (".weights.json", ".weights.h5", ".h5", ".hdf5", ".keras", ".index",
                  ".safetensors.index.json", ".safetensors")  # fmt: skip


def strip_model_suffix(name: str) -> str:
    """A file name without its Keras suffix (`e05.h5` -> `e05`; `.h5` alone -> empty)."""
    for suffix in MODEL_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_pattern(pattern: str) -> re.Pattern:
    """The compiled --tag-pattern, or ValueError saying what is wrong with it: it must be a
    valid regex with the named groups `key` and `value`."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--tag-pattern {pattern!r} is not a valid regex: {exc}") from None
    missing = [g for g in ("key", "value") if g not in compiled.groupindex]
    if missing:
        raise ValueError(
            f"--tag-pattern {pattern!r} has no group named {' or '.join(missing)}; write e.g. "
            "'(?P<key>[a-z]+)(?P<value>[0-9.e-]+)'"
        )
    return compiled


def _components(path: str, depth: int) -> list[str]:
    parts = list(PurePath(path).parts[-depth:])
    parts[-1] = strip_model_suffix(parts[-1])
    return parts


def parse_tags(path: str, pattern: str | None = None, depth: int = 3) -> dict[str, float]:
    """key -> value from the file name and its `depth - 1` parent folders; later (deeper)
    components win. `pattern` replaces the default rule: a regex with groups `key`, `value`."""
    tags: dict[str, float] = {}
    for component in _components(path, depth):
        if pattern:
            for match in re.finditer(pattern, component):
                _put(tags, match.group("key"), match.group("value"))
            continue
        tokens = [t for t in _SPLIT.split(component) if t]
        for i, token in enumerate(tokens):
            glued = _GLUED.match(token)
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            if _NUMBER.match(nxt) and not _NUMBER.match(token) and re.match(r"^[A-Za-z]", token):
                _put(tags, token, nxt)
            elif glued:
                _put(tags, glued.group("key"), glued.group("value"))
    return tags


def _put(tags: dict[str, float], key: str, value: str) -> None:
    try:
        number = float(value)
    except ValueError:
        return
    key = key.lower()
    tags[ALIASES.get(key, key)] = number
