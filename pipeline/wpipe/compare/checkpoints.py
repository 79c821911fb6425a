"""Which saves of one folder form a checkpoint series, and in what order (docs:
checkpoints). The ingest's guess (plan.predecessors, before architectures are known)
and the series pass after it (compare.series) apply the same rule.

Files are a series only where something says they were saved in training order:
- every one has an epoch or step tag (`e05.h5`, `step_200.keras`; docs: comparing), or
- every name is ModelCheckpoint-like, one prefix then a counter (`weights.05-0.42.h5`,
  `ckpt_0010.keras`, `model-3.h5`), or a bare counter (Orbax's step folders `ckpt/200`), or
- the folder holds a training log (`history.csv`, `training.log`); then names order them.
Files of one architecture side by side with none of these (`a.h5`, `b.h5`) are not a series:
their weights did not follow one another, so a "stale" layer between them would mean nothing.

The same checkpoint in other formats (`e05.h5`, `e05.keras`, `e05.weights.h5`) is never the
next checkpoint of itself: each format is a series of its own. A file holding what the file
before it holds (the same order key, or the same bytes: a copy) is left out of the series.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from wpipe.core.tags import MODEL_SUFFIXES, parse_tags, strip_model_suffix
from wpipe.store.remote import is_url

TRAINING_LOGS = ("history.csv", "training.log")  # Keras CSVLogger's usual names
# prefix ending in a separator, a counter, then optional metrics (`-0.42`, `_val_loss0.42`)
_CHECKPOINT_NAME = re.compile(
    r"^(?P<prefix>[^\d]*[A-Za-z][._-])(?P<n>\d+)"
    r"(?:[-_][A-Za-z_]*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)*$"
)


@dataclass(frozen=True)
class Save:
    """One saved model of a folder: its key (a path or a model_id), path, name, epoch or step
    tag and bytes' hash (None where not known yet)."""

    key: str
    path: str
    name: str
    step: float | None = None
    sha256: str | None = None


def natural_key(text: str) -> list:
    """`e2` before `e10`: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def format_of(path: str) -> str:
    """The save's format as its suffix (`.weights.h5`, `.keras`, …; a folder: empty)."""
    name = PurePath(path).name
    return next((s for s in MODEL_SUFFIXES if name.endswith(s)), "")


def checkpoint_number(path: str) -> tuple[str, int] | None:
    """(prefix, counter) of a ModelCheckpoint-like file name, else None. A bare counter
    (`3.h5`; Orbax's step folders `ckpt/200`) has the empty prefix."""
    name = strip_model_suffix(PurePath(path).name)
    if name.isascii() and name.isdigit():
        return "", int(name)
    match = _CHECKPOINT_NAME.match(name)
    return (match.group("prefix"), int(match.group("n"))) if match else None


def step_tag(path: str, pattern: str | None) -> float | None:
    """The epoch (else step) tag of a path (docs: comparing)."""
    tags = parse_tags(path, pattern)
    return tags.get("epoch", tags.get("step"))


def order_keys(saves: Sequence[Save], logged: bool) -> dict[str, tuple] | None:
    """key -> sort key of each save where the evidence says they are in training order,
    else None (docs: checkpoints)."""
    if all(s.step is not None for s in saves):
        return {s.key: (s.step,) for s in saves}
    numbers = {s.key: checkpoint_number(s.path) for s in saves}
    if all(numbers.values()) and len({n[0] for n in numbers.values()}) == 1:
        return {k: (n[1],) for k, n in numbers.items()}
    if logged:
        return {s.key: (natural_key(s.name),) for s in saves}
    return None


def series_of(saves: Sequence[Save], logged: bool) -> dict[str, list[Save]]:
    """format -> the saves of one folder (and architecture) that form a series in that format,
    in training order; formats with fewer than two are left out."""
    by_format: dict[str, list[Save]] = {}
    for save in saves:
        by_format.setdefault(format_of(save.path), []).append(save)
    out = {}
    for fmt, members in sorted(by_format.items()):
        keys = order_keys(members, logged) if len(members) > 1 else None
        if keys is None:
            continue
        members = sorted(members, key=lambda s: (keys[s.key], natural_key(s.name)))
        chain = [members[0]]
        for save in members[1:]:
            last = chain[-1]
            copy = save.sha256 is not None and save.sha256 == last.sha256
            if keys[save.key] != keys[last.key] and not copy:
                chain.append(save)
        if len(chain) > 1:
            out[fmt] = chain
    return out


def series_name(folder: str, arch: str | None, fmt: str | None) -> str:
    """A series' name: its folder, then `#arch` when the folder has series of two
    architectures and the format when it has series of two formats (`runs/a#.keras`)."""
    tail = (arch or "") + (fmt or "")
    return f"{folder}#{tail}" if tail else folder


def name_series(
    found: dict[tuple[str, str], dict[str, list[Save]]],
) -> dict[str, list[Save]]:
    """name -> series, from (folder, arch) -> format -> series: names tell apart what one
    folder holds, and no more."""
    out = {}
    for (folder, arch), formats in sorted(found.items()):
        archs = {a for (f, a), fs in found.items() if f == folder and fs}
        for fmt, chain in formats.items():
            many_formats = len(formats) > 1
            out[series_name(folder, arch if len(archs) > 1 else None,
                            fmt if many_formats else None)] = chain  # fmt: skip
    return out


def has_training_log(folder: str) -> bool:
    """A CSVLogger file in a local folder: evidence that its saves are one training run."""
    if is_url(folder):
        return False
    try:
        return any(Path(folder, log).is_file() for log in TRAINING_LOGS)
    except OSError:
        return False
