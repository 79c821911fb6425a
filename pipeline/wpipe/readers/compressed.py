"""Single-file saves compressed whole (`model.h5.gz`, `weights.hdf5.bz2`, `model.h5.xz`), as some
packages ship them: inflated as a stream into an anonymous temporary file (gone when closed,
never a named file), with the limits of a `.keras` archive's deflated member (keras_zip): at
most MAX_RATIO times the compressed size and MAX_INFLATED_BYTES, a gzip's declared size checked
before anything is inflated, the output counted as it inflates. What it holds is then read as
the HDF5 file it is; anything else is reported with the command that decompresses it.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import IO

from wpipe.core.tags import MODEL_SUFFIXES
from wpipe.readers.base import ModelReadError
from wpipe.readers.keras_zip import MAX_INFLATED_BYTES, MAX_RATIO
from wpipe.readers.safefile import open_regular

SUFFIXES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}
SIGNATURES = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00"}
OPENERS = {  # each reads from an open file object
    "gzip": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    "bzip2": lambda raw: bz2.BZ2File(raw, mode="rb"),
    "xz": lambda raw: lzma.LZMAFile(raw, mode="rb"),  # noqa: SIM115 (used in a with)
}
COMMANDS = {"gzip": "gunzip -k", "bzip2": "bunzip2 -k", "xz": "unxz -k"}
CHUNK = 16 << 20
RESERVE = 1 << 30  # free space a decompressed copy leaves in the temporary folder
SMALL = 1 << 20  # below this, a stream may inflate to 1 MB whatever its ratio (headers, configs)


def named_like_save(name: str) -> bool:
    """`model.h5.gz`, `weights.hdf5.bz2`, `m.keras.xz`: a Keras suffix under a compression one."""
    lower = name.lower()
    return any(
        lower.endswith(suffix) and lower[: -len(suffix)].endswith(MODEL_SUFFIXES)
        for suffix in SUFFIXES
    )


def kind_of(path: Path, where: str) -> str | None:
    """gzip, bzip2 or xz from the first bytes; None for anything else."""
    with open_regular(path, where) as fh:
        head = fh.read(6)
    return next((k for k, sig in SIGNATURES.items() if head.startswith(sig)), None)


def how_to_decompress(kind: str, path: Path) -> str:
    return f"decompress it ({COMMANDS[kind]} {path.name}) and ingest the file it holds"


def limit(kind: str, path: Path, where: str) -> int:
    """The most bytes `path` may inflate to; a gzip declaring more is refused unread."""
    size = path.stat().st_size
    cap = min(max(size * MAX_RATIO, SMALL), MAX_INFLATED_BYTES)
    if kind == "gzip" and size < 1 << 32:  # ISIZE: the last member's size mod 2**32
        with open_regular(path, where) as fh:
            fh.seek(max(size - 4, 0))
            (declared,) = struct.unpack("<I", fh.read(4).rjust(4, b"\0"))
        if declared > cap:  # a bomb, or a cut file whose last bytes are not a trailer
            raise _bomb(where, kind, f"declares {declared:,} bytes (or is cut short), over", cap)
    return cap


def inflate(path: Path, where: str, kind: str) -> IO[bytes]:
    """`path` decompressed into an anonymous temporary file (the caller closes it), refused
    as soon as it passes `limit`; it never leaves less than RESERVE free beside it."""
    cap = limit(kind, path, where)
    folder = tempfile.gettempdir()
    out = tempfile.TemporaryFile(prefix="wpipe-")  # noqa: SIM115 (the caller closes it)
    written = 0
    try:
        with open_regular(path, where) as raw, OPENERS[kind](raw) as stream:
            while chunk := _read(stream, kind, where):
                written += len(chunk)
                if written > cap:
                    raise _bomb(where, kind, "inflates past", cap)
                if shutil.disk_usage(folder).free < len(chunk) + RESERVE:
                    raise ModelReadError(
                        "io-error", f"{where}: not enough space in {folder} to decompress it "
                        f"({written:,} bytes so far); {how_to_decompress(kind, path)}"
                    )  # fmt: skip
                out.write(chunk)
    except BaseException:
        out.close()
        raise
    out.seek(0, os.SEEK_SET)
    return out


def _read(stream: IO[bytes], kind: str, where: str) -> bytes:
    try:
        return stream.read(CHUNK)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise ModelReadError(
            "bad-compression", f"{where}: damaged {kind} stream ({exc}); {COMMANDS[kind]} "
            "says more"
        ) from None  # fmt: skip


def _bomb(where: str, kind: str, what: str, cap: int) -> ModelReadError:
    return ModelReadError(
        "compression-bomb",
        f"{where}: {kind} file {what} {cap:,} bytes (at most {MAX_RATIO}x its size); refusing",
    )
