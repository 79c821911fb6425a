"""The folder walk: which paths under the user's arguments are model saves.

Only regular files are candidates (checked with `stat`, after following symlinks); a FIFO, a
device or a socket is never opened. Symlinked folders are not entered (no loops). A dangling
or looping symlink, or a special file, whose name looks like a model is reported (`Skipped`,
then an `ingest_errors` row) rather than raised; other such entries are passed over silently.
The database, its WAL, its lock file and the lake are never candidates, wherever they live
(`dblock.Protected`, by device and inode): opening and closing the database would drop
DuckDB's lock. Folders are walked with an explicit stack, at most MAX_DEPTH levels deep: what
lies deeper, and a folder whose path the system refuses (PATH_MAX), is reported (`Skipped`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from wpipe.core.dblock import Protected
from wpipe.core.tags import MODEL_SUFFIXES
from wpipe.readers import (
    ModelReadError,
    compressed,
    keras_dir,
    lists_shards,
    orbax,
    saved_model,
    sharded,
    sniff,
    tf_bundle,
    unsupported,
)
from wpipe.readers.safefile import stat_problem

# Folder levels below a folder given that the walk enters: real trees of runs and checkpoints
# are a dozen deep; a folder nested thousands deep is hostile (see `_walk`).
MAX_DEPTH = 100


@dataclass(frozen=True)
class Skipped:
    """A path that looks like a model but cannot be one; recorded in ingest_errors."""

    path: Path
    code: str
    message: str
    size: int
    mtime: float


def walk(
    paths: Iterable[str | os.PathLike], protected: Protected | None = None
) -> tuple[list[Path], list[Skipped]]:
    """Model saves under `paths`, and the paths that look like models but cannot be read.

    Named files or folders count as given; folders are walked (`_walk`). In a walk a regular
    file counts when its content starts like HDF5 or ZIP, its name ends like a Keras file (or
    a Keras file compressed whole: `model.h5.gz`, `.bz2`, `.xz`), or it is a recognisable
    unreadable save (reported, not silently skipped). When a walk finds no save at all but
    other compressed files (`model.gz`), each is reported: it may be a model. A folder that is
    itself a save (unzipped .keras, SavedModel, …) counts as one model; shards listed by a
    `.weights.json` or `.safetensors.index.json` index belong to that index, a TF checkpoint's
    `.data-*` shards to its `.index` (each `.index` is one model; the folder around it is
    walked as usual), and each step folder of an Orbax checkpoint is one model (`ckpt/200`).
    Hidden folders are not entered.
    """
    protected = protected or Protected([])
    found: list[Path] = []
    skipped: list[Skipped] = []
    packed: list[Path] = []  # compressed files not named like a save
    for raw in paths:
        given = Path(os.path.abspath(raw))
        problem = None if os.path.isdir(given) else stat_problem(given, str(given))
        root = Path(os.path.realpath(given))
        if problem:
            skipped.append(_skipped(given, problem))
        elif root in protected:
            continue
        elif root.is_dir() and not _is_save_folder(root):
            _walk(root, protected, found, skipped, packed)
        else:
            found.append(root)
    if not found:  # a folder of compressed files only must not look empty
        skipped += [_skipped(p, _compressed_problem(p)) for p in packed]
    return list(dict.fromkeys(found)), skipped


def _compressed_problem(path: Path) -> ModelReadError:
    kind = compressed.SUFFIXES[path.suffix.lower()]
    return ModelReadError(
        "compressed-file",
        f"{path}: a {kind} file not named like a Keras save (wpipe reads model.h5.gz, "
        f".hdf5.bz2, .keras.xz); if it holds a model, {compressed.how_to_decompress(kind, path)}",
    )


def _walk(
    root: Path, protected: Protected, found: list[Path], skipped: list[Skipped], packed: list[Path]
) -> None:
    """Depth first, folders in name order, with an explicit stack (a folder nested thousands
    of levels deep cannot exhaust Python's recursion); a folder deeper than MAX_DEPTH levels
    below `root`, or one the system cannot list (a path longer than PATH_MAX), is not entered
    and is reported instead. Compressed files not named like a save go to `packed`."""
    stack = [(root, 0)]
    while stack:
        here, depth = stack.pop()
        if here in protected:
            continue
        listed = _listing(here, skipped)
        if listed is None:
            continue
        dirs, files = listed
        saves = [d for d in dirs if _is_save_folder(here / d) and here / d not in protected]
        found.extend(here / d for d in saves)
        enter = [d for d in dirs if not d.startswith(".") and d not in saves
                 and not os.path.islink(here / d)]  # fmt: skip
        regular = [name for name in files if _regular(here / name, protected, skipped)]
        shards = {n for index in regular if lists_shards(here / index)
                  for n in _shards_of(here / index)}  # fmt: skip
        shards |= {p.name for index in regular if tf_bundle.is_index(here / index)
                   for p in tf_bundle.bundle_files(here / index)[1:]}  # fmt: skip
        for name in regular:
            candidate = here / name
            if name in shards:
                continue
            if (
                _named_like_model(name)
                or unsupported.is_candidate(candidate)
                or _looks_like_model(candidate)
            ):
                found.append(candidate)
            elif candidate.suffix.lower() in compressed.SUFFIXES:
                packed.append(candidate)
        if enter and depth >= MAX_DEPTH:
            skipped.append(_too_deep(here / enter[0], len(enter)))
            continue
        stack.extend((here / d, depth + 1) for d in reversed(enter))


def _listing(folder: Path, skipped: list[Skipped]) -> tuple[list[str], list[str]] | None:
    """(subfolders, other entries) of `folder`, sorted; None when it cannot be listed. A
    folder that vanished or may not be read is passed over as `os.walk` did; one whose path
    the system refuses (ENAMETOOLONG) is reported: the models in it are out of reach."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                (dirs if _is_dir(entry) else files).append(entry.name)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            message = (f"{folder}: not searched: its path is longer than the system accepts "
                       f"({len(os.fsencode(folder))} bytes)")  # fmt: skip
            skipped.append(_skipped(folder, ModelReadError("io-error", message)))
        return None
    return sorted(dirs), sorted(files)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _too_deep(first: Path, count: int) -> Skipped:
    others = f" (and {count - 1} other folder(s) beside it)" if count > 1 else ""
    message = (f"{first}: not searched: folders nested more than {MAX_DEPTH} levels below the "
               f"folder given are not entered{others}")  # fmt: skip
    return _skipped(first, ModelReadError("too-deep", message))


def _regular(path: Path, protected: Protected, skipped: list[Skipped]) -> bool:
    """True for a regular file that may be read; reports a model-like name that is not one."""
    problem = stat_problem(path, str(path))
    if problem is None:
        return path not in protected
    if _named_like_model(path.name):
        skipped.append(_skipped(path, problem))
    return False


def _skipped(path: Path, problem: ModelReadError) -> Skipped:
    try:
        st = os.lstat(path)
        size, mtime = (st.st_size if stat.S_ISREG(st.st_mode) else 0), st.st_mtime
    except OSError:
        size, mtime = 0, 0.0
    return Skipped(path, problem.code, problem.message, size, mtime)


def _named_like_model(name: str) -> bool:
    # a save compressed whole (`model.h5.gz`) is read through bounded decompression
    return name.lower().endswith(MODEL_SUFFIXES) or compressed.named_like_save(name)


def _is_save_folder(path: Path) -> bool:
    try:
        return path.is_dir() and (
            keras_dir.claims(path)
            or saved_model.claims(path)
            or orbax.claims(path)
            or unsupported.identify(path) is not None
        )
    except OSError:  # a path longer than the system accepts: `_listing` reports it
        return False


def _shards_of(index: Path) -> list[str]:
    try:
        return sharded.shard_names(index, str(index))
    except ModelReadError:
        return []


def _looks_like_model(path: Path) -> bool:
    try:
        return sniff(path) is not None
    except (OSError, ModelReadError):
        return False
