"""`.keras` zip archives (Keras 3, Keras 2.12–2.15; Keras 2.11's `variables.h5`), §1.3, §4.1.

The weights member is opened in place when stored (Keras writes ZIP_STORED), as a window on
the archive's own bytes (zipfile's member reader rereads from the start on every backward
seek, which HDF5 makes thousands of: 2.5 s for ResNet50's metadata), so memory holds one
tensor at a time; a deflated (re-zipped) member is inflated with its declared size checked
as it inflates — into memory up to 256 MB, else into an anonymous temporary file. Nothing is
ever extracted to a named file.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import IO

from wpipe.readers import jsonsafe, native
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import Model, ModelReadError
from wpipe.readers.keras_config import parse_json

FORMAT = "keras-zip"
WEIGHT_MEMBERS = ("model.weights.h5", "variables.h5")
MAX_RATIO = 100  # weights barely compress; a member inflating 100x its stored size is a bomb
MAX_INFLATED_BYTES = 16 << 30
MAX_IN_MEMORY_BYTES = 256 << 20  # a bigger deflated member is inflated to a temporary file


def _check_members(zf: zipfile.ZipFile, where: str) -> None:
    for info in zf.infolist():
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in info.filename:
            raise ModelReadError(
                "unsafe-archive",
                f"{where}: archive member path {info.filename!r} leaves the archive",
            )
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > 1 << 20:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > MAX_RATIO or info.file_size > MAX_INFLATED_BYTES:
                raise ModelReadError(
                    "zip-bomb",
                    f"{where}: member {info.filename} would inflate {ratio:.0f}x to "
                    f"{info.file_size:,} bytes; refusing",
                )


def _read_bounded(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, where: str) -> bytes:
    """The member's bytes, refusing to inflate beyond its declared size or `limit`."""
    if info.file_size > limit:
        raise ModelReadError("zip-bomb", f"{where}: member {info.filename} is too large")
    with zf.open(info) as fh:
        data = fh.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise ModelReadError("zip-bomb", f"{where}: member {info.filename} inflates past its size")
    return data


def _inflate_to_temp(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> IO[bytes]:
    """A big deflated member inflated into an anonymous temporary file (gone when closed), so
    memory holds one tensor at a time, as for a stored member."""
    if info.file_size > MAX_INFLATED_BYTES:
        raise ModelReadError("zip-bomb", f"{where}: member {info.filename} is too large")
    folder = tempfile.gettempdir()
    if shutil.disk_usage(folder).free < info.file_size + (1 << 30):
        raise ModelReadError(
            "io-error", f"{where}: not enough space in {folder} to inflate {info.filename} "
            f"({info.file_size:,} bytes; re-save the model uncompressed)"
        )  # fmt: skip
    out = tempfile.TemporaryFile(prefix="wpipe-")  # noqa: SIM115 (the caller closes it)
    written = 0
    with zf.open(info) as fh:
        while chunk := fh.read(16 << 20):
            written += len(chunk)
            if written > info.file_size:
                out.close()
                raise ModelReadError(
                    "zip-bomb", f"{where}: member {info.filename} inflates past its size"
                )
            out.write(chunk)
    out.seek(0)
    return out


class _Window(io.RawIOBase):
    """Read-only, seekable view of `length` bytes at `start` of an open file descriptor;
    reads never leave the window (positioned reads: no shared file offset)."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd, self._start, self._length, self._pos = fd, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = max(min(len(view), self._length - self._pos), 0)
        if n == 0:
            return 0
        got = os.preadv(self._fd, [view[:n]], self._start + self._pos)
        self._pos += got
        return got


def _stored_window(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> _Window:
    """The window on a stored member's bytes, found from its local header (whose extra field
    may differ from the central directory's), checked to lie inside the archive."""
    if info.flag_bits & 0x1:
        raise ModelReadError("unsupported-format", f"{where}: {info.filename} is encrypted")
    fd = zf.fp.fileno()
    header = os.pread(fd, 30, info.header_offset)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise ModelReadError("bad-zip", f"{where}: {info.filename}'s local header is damaged")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    if start + info.file_size > os.fstat(fd).st_size:
        raise ModelReadError("bad-zip", f"{where}: {info.filename} runs past the archive's end")
    return _Window(fd, start, info.file_size)


def read_json_member(zf: zipfile.ZipFile, name: str, where: str) -> dict | None:
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    raw = _read_bounded(zf, info, jsonsafe.MAX_JSON_BYTES, where)
    return parse_json(raw.decode("utf-8", errors="replace"), name, where)


@contextmanager
def open_archive(path: str, where: str) -> Iterator[Model]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ModelReadError("bad-zip", f"{where}: not a readable zip archive ({exc})") from None
    with zf:
        _check_members(zf, where)
        names = set(zf.namelist())
        if "model.weights.npz" in names and not names & set(WEIGHT_MEMBERS):
            raise ModelReadError(
                "unsupported-format",
                f"{where}: .keras archive with npz weights (pickled objects) — not read, since "
                "unpickling can run code; re-save with model.save('x.keras')",
            )
        member = next((m for m in WEIGHT_MEMBERS if m in names), None)
        if "config.json" not in names or member is None:
            missing = "config.json" if "config.json" not in names else "model.weights.h5"
            raise ModelReadError(
                "missing-member", f"{where}: zip archive without {missing} — not a .keras model"
            )
        config = read_json_member(zf, "config.json", where)
        metadata = read_json_member(zf, "metadata.json", where)
        info = zf.getinfo(member)
        if info.compress_type == zipfile.ZIP_STORED:
            handle = _stored_window(zf, info, where)  # read lazily, in place
        elif info.file_size <= MAX_IN_MEMORY_BYTES:
            handle = io.BytesIO(_read_bounded(zf, info, MAX_IN_MEMORY_BYTES, where))
        else:
            handle = _inflate_to_temp(zf, info, where)
        with handle:
            try:
                f = h5py.File(handle, "r")
            except OSError as exc:
                raise ModelReadError(
                    "corrupt", f"{where}: {member} is not a readable HDF5 file ({exc})"
                ) from None
            with f:
                yield native.read([f], where, FORMAT, config, metadata)
