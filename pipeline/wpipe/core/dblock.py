"""The writer lock of a database, and the files an ingest must never open as input.

DuckDB locks its file with POSIX record locks, which belong to the *process*: closing any
descriptor of the file in that process — a folder walk sniffing every file's first bytes, say
— silently drops the lock, and a second writer gets in and corrupts the database. So a wpipe
writer (1) first takes an `flock` lock on a lock file beside the database (`<db>.lock`), which
belongs to its own open file description and which nothing else ever opens, before anything
touches the database, its WAL or the lake; and (2) never opens the database, its WAL, its
temporary folder, the lock file or the lake as input: the walk recognises them by device and
inode (`Protected`), wherever they live and whatever names lead to them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: DuckDB's own lock is all there is (it is per handle there)
    fcntl = None  # type: ignore[assignment]


class DatabaseBusy(Exception):
    """Another wpipe writer (an ingest, a compaction) holds the database."""


def lock_path(db_path: str | os.PathLike) -> Path:
    return Path(f"{os.path.abspath(db_path)}.lock")


class WriterLock:
    """An exclusive, non-blocking `flock` on `<db>.lock`, held until `release()`.

    The file stays when released (removing it could let two writers lock two different
    files); it holds the holder's PID and start time, so a refused writer can name it."""

    def __init__(self, db_path: str | os.PathLike, what: str = "a wpipe writer") -> None:
        self.db = str(db_path)
        self.path = lock_path(db_path)
        self._fd: int | None = None
        self.created = False  # this lock made the file (discard() removes it again)
        if fcntl is None:
            return
        self.created = not os.path.lexists(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DatabaseBusy(
                f"{self.db}: in use by {holder}; wait for it to finish, then run this again"
            ) from None
        started = time.strftime("%H:%M:%S UTC", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} (PID {os.getpid()}, started {started})\n".encode(), 0)
        self._fd = fd
        _HELD.add(fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            _HELD.discard(self._fd)
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Release, and remove the lock file if this lock made it: `path` turned out not to be
        a wpipe database (a model file given as --db), and no lock file stays beside it. Safe
        while held: a writer that opened the file meanwhile was refused by the lock."""
        if self._fd is not None and self.created:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.release()

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(db_path: str | os.PathLike) -> str | None:
    """What holds the database's writer lock, as it wrote it (None: unknown). The file is
    only read, never locked: a reader may look at it at any time."""
    path = lock_path(db_path)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if stat.S_ISREG(os.stat(path).st_mode):  # never block on a FIFO put there
            return path.read_text()[:200].strip() or None
    return None


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = os.pread(fd, 200, 0).decode().strip()
        if text:
            return text
    return "another wpipe writer"


# Lock descriptors of this process: a child made by fork() closes its copies (the lock itself
# stays with the parent's descriptor), so a worker outliving a killed ingest cannot keep it.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def protected_paths(db_path: str | os.PathLike, lake: str | os.PathLike | None) -> list[Path]:
    """The database's own files and folders: never model candidates, never opened as input."""
    db = Path(os.path.abspath(db_path))
    own = [db, Path(f"{db}.wal"), Path(f"{db}.tmp"), lock_path(db)]
    return own + ([Path(os.path.abspath(lake))] if lake is not None else [])


class Protected:
    """Recognises the protected files by (device, inode) — symlinks and hard links included —
    and, for those not created yet (the WAL appears mid-run), by resolved path."""

    def __init__(self, paths: list[Path]) -> None:
        self.ids: set[tuple[int, int]] = set()
        self.missing = list(paths)
        self._refresh()

    def _refresh(self) -> None:
        """Inodes of the protected paths that exist by now (the WAL appears mid-run)."""
        still = []
        for p in self.missing:
            try:
                st = os.stat(p)
            except OSError:
                still.append(p)
                continue
            self.ids.add((st.st_dev, st.st_ino))
        self.missing = still

    def __contains__(self, path: Path) -> bool:
        # by inode alone: a path that resolves to a protected file exists, so that file does,
        # and its inode is known once it exists (a stat of the few missing ones, not a
        # realpath of every walked file, which costs a lstat per path component)
        try:
            st = os.stat(path)
        except OSError:
            return False
        if self.missing:
            self._refresh()
        return (st.st_dev, st.st_ino) in self.ids
