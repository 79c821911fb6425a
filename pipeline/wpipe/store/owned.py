"""The lake is a folder wpipe owns, and wpipe deletes in it only what it wrote.

A lake carries a marker (`_wpipe/lake.json`) from the moment wpipe first takes it. A folder
without one is taken only when it is new, empty, or holds nothing but what wpipe writes (a
lake of an older wpipe); any other file in it refuses the lake (`LakeNotOwned`, one line):
`--lake .` in a models folder must not become a folder where wpipe deletes.

Every data file a wpipe process writes is recorded before it is created, as an empty entry
`_wpipe/written/<table>/<name>`. A sweep (files a killed run wrote, files later commits
dropped) deletes only recorded files that the table's current version does not name, never a
file by "not referenced": a file someone else puts beside the data files, even one named like
them, is never deleted. Entries are dropped with their files.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterable

import pyarrow.fs as pafs

from wpipe.core import schema
from wpipe.core.textsafe import display
from wpipe.store.location import LakeLocation

OWN = "_wpipe"  # wpipe's own folder in a lake: the marker and the record of written files
MARKER = f"{OWN}/lake.json"
WRITTEN = f"{OWN}/written"
# a data file's name as wpipe's writer makes it (uuid4 hex), or delta-rs's writer (older wpipe)
DATA_NAME = re.compile(
    r"^part-(?:[0-9a-f]{32}|\d{5}-[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}-c\d{3}(?:\.\w+)?)"
    r"\.parquet$"
)
_OLD_PARTITION = re.compile(r"^[0-9a-f]{16}$")  # wpipe <= 0.1: <lake>/<model_id>/<table>.parquet
_CACHE = ".spectra-cache"  # spectra_tables.CACHE_FOLDER: <2 hex>/<key>.npz
_TABLES = {t.name for t in schema.ALL_TABLES}
_made: set[str] = set()  # record folders this process has made (one mkdir each)


class LakeNotOwned(Exception):
    """The --lake folder holds files wpipe did not write: wpipe will not write (or delete) there."""


def claim(location: LakeLocation) -> None:
    """Take the lake's folder for wpipe (see the module's doc), or raise LakeNotOwned."""
    fs, root = location.filesystem()
    root = root.rstrip("/")
    kind = fs.get_file_info(root).type
    if kind == pafs.FileType.NotFound:
        fs.create_dir(root, recursive=True)
    elif kind != pafs.FileType.Directory:
        raise LakeNotOwned(f"{display(location.root)}: not a folder; give --lake a new folder")
    elif fs.get_file_info(f"{root}/{MARKER}").type == pafs.FileType.File:
        return
    else:
        foreign = _foreign(fs, root)
        if foreign is not None:
            raise LakeNotOwned(  # the name as repr: one line whatever it holds
                f"{display(location.root)}: holds files wpipe did not write "
                f"({foreign!r}); give --lake a new or empty folder"
            )
        _adopt(location, fs, root)
    fs.create_dir(f"{root}/{OWN}", recursive=True)
    with fs.open_output_stream(f"{root}/{MARKER}") as out:
        out.write(json.dumps({"wpipe_lake": 1, "taken": time.time()}).encode())


def _foreign(fs: pafs.FileSystem, root: str) -> str | None:
    """The first entry (relative to the lake) that is not something wpipe writes, or None."""
    for info in _list(fs, root):
        rule = _RULES.get(_kind(info))
        if rule is None:
            return info.base_name
        recursive, allowed = rule
        for entry in _list(fs, info.path, recursive):
            if not allowed(entry):
                return entry.path[len(root) + 1 :]
    return None


def _kind(info: pafs.FileInfo) -> str | None:
    """What a top-level folder of a lake is for wpipe (None: not wpipe's)."""
    if info.type != pafs.FileType.Directory:
        return None
    name = info.base_name
    if name in _TABLES:
        return "table"
    if _OLD_PARTITION.match(name):
        return "partition"
    return {_CACHE: "cache", OWN: "own", ".tmp": "tmp"}.get(name)


def _is_dir(info: pafs.FileInfo) -> bool:
    return info.type == pafs.FileType.Directory


def _is_data_file(info: pafs.FileInfo) -> bool:
    return info.type == pafs.FileType.File and DATA_NAME.match(info.base_name) is not None


# kind of folder -> (listed recursively, which entries wpipe writes there)
_RULES = {
    "table": (False, lambda i: _is_data_file(i) or (_is_dir(i) and i.base_name == "_delta_log")),
    "partition": (False, lambda i: i.type == pafs.FileType.File
                  and i.base_name.removesuffix(".parquet") in _TABLES),
    "cache": (True, lambda i: (_is_dir(i) and len(i.base_name) == 2)
              or (i.type == pafs.FileType.File and i.base_name.endswith(".npz"))),
    "own": (True, lambda i: _is_dir(i) or _is_data_file(i)),
    "tmp": (False, lambda i: False),  # an older wpipe's temporary folder, if left empty
}  # fmt: skip


def _list(fs: pafs.FileSystem, folder: str, recursive: bool = False) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True, recursive=recursive))


def _adopt(location: LakeLocation, fs: pafs.FileSystem, root: str) -> None:
    """A lake of an older wpipe (only wpipe's files, checked): its data files are recorded as
    wpipe's, so those its log no longer names (a killed run's) are swept like any other."""
    for name in _TABLES:
        for info in _list(fs, f"{root}/{name}"):
            if info.type == pafs.FileType.File and DATA_NAME.match(info.base_name):
                record(location, name, info.base_name)


def record(location: LakeLocation, table: str, name: str) -> None:
    """Record data file `name` of `table` as wpipe's, before it is created."""
    fs, root = location.filesystem()
    folder = f"{root.rstrip('/')}/{WRITTEN}/{table}"
    if folder not in _made:
        fs.create_dir(folder, recursive=True)
        _made.add(folder)
    try:
        fs.open_output_stream(f"{folder}/{name}").close()
    except FileNotFoundError:  # the folder was removed since (a lake deleted and made again)
        fs.create_dir(folder, recursive=True)
        fs.open_output_stream(f"{folder}/{name}").close()


def forget(location: LakeLocation, table: str, names: Iterable[str]) -> None:
    """Drop the records of `table`'s data files `names` (deleted, or never created)."""
    fs, root = location.filesystem()
    folder = f"{root.rstrip('/')}/{WRITTEN}/{table}"
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{folder}/{name}")


def recorded(location: LakeLocation, table: str, min_age: float = 0.0) -> list[str]:
    """`table`'s data files recorded as wpipe's, recorded `min_age` seconds ago or earlier."""
    fs, root = location.filesystem()
    now = time.time()
    return sorted(
        info.base_name
        for info in _list(fs, f"{root.rstrip('/')}/{WRITTEN}/{table}")
        if info.type == pafs.FileType.File
        and DATA_NAME.match(info.base_name)
        and (not min_age or info.mtime is None or now - info.mtime.timestamp() >= min_age)
    )
