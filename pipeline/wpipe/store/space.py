"""A store that cannot be written (a full disk, a quota, a file-size limit): the run stops.

Every file after the first one that met a full disk would fail the same way, so an ingest
stops there (`StoreFailed`) instead of recording each as an error: the models loaded before
are kept (DuckDB's transactions and the lake's commits are atomic), the data files the run
wrote but did not commit are removed (or swept by the next run: `Lake.sweep`).
"""

from __future__ import annotations

import errno
import os

from wpipe.core.textsafe import first_line

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# pyarrow, delta-rs and DuckDB report a full disk in their message, mostly without an errno;
# DuckDB then refuses every statement on the connection it invalidated
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large",
               "os error 28", "database has been invalidated")  # fmt: skip


class StoreFailed(Exception):
    """The database or the lake could not be written: the ingest stopped (one line says why)."""


def is_full(exc: BaseException) -> bool:
    """True for an error that says the disk (or a quota or size limit) is full."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    text = str(exc)
    return any(t in text for t in _FULL_TEXTS)


def full_reason(exc: BaseException) -> str:
    """The error's first line, with the system's words for a full disk when they are further
    down (delta-rs: "Generic LocalFileSystem error" first, "os error 28" in its source)."""
    line, text = first_line(exc), str(exc)
    if "os error 28" in text:
        text += " " + os.strerror(errno.ENOSPC)
    said = [t for t in _FULL_TEXTS[:3] if t in text and t not in line]
    return f"{line}: {said[0]}" if said else line
