"""What `wpipe ingest` says when a run finds nothing, or leaves models whose files are gone."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from wpipe.ingest.plan import Report
from wpipe.store import remote

# Suffixes of archives and compressions wpipe does not open (gzip, bzip2 and xz files are
# read when named like a save, and reported by the walk otherwise): a model inside one is
# not read as is.
COMPRESSED = (".zst", ".lz4", ".7z", ".rar", ".tar", ".tgz")
SCAN_LIMIT = 100_000  # folder entries looked at to explain an empty run
SUFFIXES_SHOWN = 5
KERAS_NAMES = ".h5, .hdf5, .keras, .weights.h5, .weights.json"


def ingest_hints(paths: list[str], report: Report) -> list[str]:
    """One line per thing a user should know after the run: nothing found and why; models
    whose files are gone and kept."""
    lines = []
    if report.files == 0:
        lines += [why_empty(p) for p in paths]
    if report.missing:
        count = f"{report.missing} model's file is" if report.missing == 1 else (
            f"{report.missing} models' files are")  # fmt: skip
        lines.append(f"{count} missing (deleted or moved since ingested): --prune drops them")
    return lines


def why_empty(path: str) -> str:
    """`0 model files found in PATH: <why>`, from a bounded look at what the folder holds."""
    head = f"0 model files found in {path}"
    if remote.is_url(path):
        return f"{head}: nothing under it is a Keras save ({KERAS_NAMES}, or HDF5/ZIP content)"
    if not os.path.isdir(path):
        return f"{head}: the file is not a Keras save (neither HDF5 nor ZIP content)"
    seen, hidden, suffixes, more = _look(Path(path))
    if not seen and not hidden:
        return f"{head}: the folder is empty" + (" (of files; it has folders)" if more else "")
    if not seen:
        return (
            f"{head}: its {hidden} files are all in hidden folders (names starting with `.`), "
            "which are not searched"
        )
    common = ", ".join(f"{s or '(no suffix)'} ×{n}" for s, n in
                       suffixes.most_common(SUFFIXES_SHOWN))  # fmt: skip
    text = (
        f"{head}: none of its {seen}{'+' if more else ''} files is a Keras save (by content: "
        f"HDF5 or ZIP; by name: {KERAS_NAMES}); it holds {common}"
    )
    compressed = sorted(s for s in suffixes if s in COMPRESSED)
    if compressed:
        text += (
            f"; archives and compressed files ({', '.join(compressed)}) are not opened: "
            "unpack them first (e.g. `tar -xf models.tar`, `zstd -d model.h5.zst`)"
        )
    return text


def _look(root: Path) -> tuple[int, int, Counter, bool]:
    """(files outside hidden folders, files in hidden ones, suffix counts, more left
    unlooked-at / folders seen), looking at no more than SCAN_LIMIT entries."""
    seen = hidden = looked = 0
    suffixes: Counter = Counter()
    folders = False
    stack = [(root, False)]
    while stack and looked < SCAN_LIMIT:
        folder, in_hidden = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            looked += 1
            if entry.is_dir(follow_symlinks=False):  # the walk enters no hidden folder
                folders = True
                stack.append((Path(entry.path), in_hidden or entry.name.startswith(".")))
            elif in_hidden:
                hidden += 1
            else:
                seen += 1
                suffixes[Path(entry.name).suffix.lower()] += 1
    return seen, hidden, suffixes, bool(stack) or (folders and not seen and not hidden)
