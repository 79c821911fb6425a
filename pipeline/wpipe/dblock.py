"""The writer lock of a database, and the files an ingest must never open as input.

DuckDB locks its file with POSIX record locks, which belong to the *process*: closing any
descriptor of the file in that process — a folder walk sniffing every file's first bytes, say
— silently drops the lock, and a second writer gets in and corrupts the database. So an
ingest (1) takes its own `flock` lock on the database file, which belongs to the open file
description and survives other descriptors being closed, before it changes anything, and
(2) never opens the database, its WAL, its temporary folder or the lake as input: the walk
recognises them by device and inode, wherever they live and whatever names lead to them.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: DuckDB's own lock is all there is (it is per handle there)
    fcntl = None  # type: ignore[assignment]


class DatabaseBusy(Exception):
    """Another process is writing the database."""


class WriterLock:
    """An exclusive, non-blocking `flock` on the database file, held until `release()`.

    Taken right after DuckDB opened the file read-write (so the file exists and DuckDB's own
    lock already refused a concurrent writer); released only after DuckDB closed it, because
    closing this descriptor earlier would drop DuckDB's record lock too."""

    def __init__(self, db_path: str | os.PathLike) -> None:
        self.path = str(db_path)
        self._fd: int | None = None
        if fcntl is None:
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DatabaseBusy(f"{self.path}: another wpipe ingest is writing it") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def protected_paths(db_path: str | os.PathLike, lake: str | os.PathLike) -> list[Path]:
    """The database's own files and folders: never model candidates, never opened as input."""
    db = Path(db_path).absolute()
    return [db, Path(f"{db}.wal"), Path(f"{db}.tmp"), Path(lake).absolute()]


class Protected:
    """Recognises the protected files by (device, inode) — links and renames included — and,
    for those not created yet (the WAL appears mid-run), by resolved path."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = {p.resolve() for p in paths}
        self.ids: set[tuple[int, int]] = set()
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                continue
            self.ids.add((st.st_dev, st.st_ino))

    def __contains__(self, item: tuple[Path, os.stat_result]) -> bool:
        path, st = item
        return (st.st_dev, st.st_ino) in self.ids or path.resolve() in self.paths
