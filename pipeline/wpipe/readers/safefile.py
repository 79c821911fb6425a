"""Open only regular files: never a FIFO, a device, a socket, a dangling or looping symlink.

A FIFO named `x.h5` blocks `open()` forever, `/dev/zero` behind a symlink never ends, and a
self-referencing symlink raises ELOOP: each is checked with `stat` (which follows symlinks)
before anything is opened, and `open_regular` opens non-blocking and checks the descriptor
again, so a file swapped for a FIFO between the two checks still cannot block.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from wpipe.readers.base import ModelReadError

KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
}


def kind_of(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def stat_problem(path: Path, where: str) -> ModelReadError | None:
    """Why `path` cannot be opened as a regular file (None when it can)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return _os_problem(path, where, exc)
    if not stat.S_ISREG(st.st_mode):
        kind = kind_of(st.st_mode)
        return ModelReadError("not-a-regular-file", f"{where}: {path.name} is {kind}")
    return None


def require_regular(path: Path, where: str) -> os.stat_result:
    """`os.stat(path)`, or a ModelReadError when it is not a readable regular file."""
    problem = stat_problem(path, where)
    if problem:
        raise problem
    return os.stat(path)


def open_regular(path: Path, where: str) -> BinaryIO:
    """A regular file opened for binary reading (never blocks on a FIFO or a device)."""
    require_regular(path, where)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise _os_problem(path, where, exc) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):  # swapped since the stat above
        os.close(fd)
        raise ModelReadError("not-a-regular-file", f"{where}: {path.name} is {kind_of(mode)}")
    return os.fdopen(fd, "rb")


def _os_problem(path: Path, where: str, exc: OSError) -> ModelReadError:
    if exc.errno == errno.ELOOP:
        return ModelReadError("symlink-loop", f"{where}: {path.name} is a symlink loop")
    if exc.errno == errno.ENOENT and os.path.islink(path):
        target = os.readlink(path)
        return ModelReadError(
            "dangling-symlink", f"{where}: {path.name} is a symlink to {target}, which is missing"
        )
    if exc.errno == errno.ENOENT:
        return ModelReadError("missing-member", f"{where}: {path.name} is missing")
    return ModelReadError("io-error", f"{where}: {path.name}: {exc.strerror or exc}")
