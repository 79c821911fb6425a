"""read stage: detect a file's layout by content and yield format-neutral records."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py

from wpipe.readers import h5safe, legacy_h5
from wpipe.readers.base import Layer, Model, ModelReadError, Tensor

__all__ = ["Layer", "Model", "ModelReadError", "Tensor", "open_model", "sniff"]

ZIP_SIGNATURE = b"PK\x03\x04"


def sniff(path: str | os.PathLike) -> str | None:
    """'hdf5', 'zip', or None, from the first bytes (never from the extension)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if h5safe.is_hdf5(head):
        return "hdf5"
    if head.startswith(ZIP_SIGNATURE):
        return "zip"
    return None


@contextmanager
def open_model(path: str | os.PathLike) -> Iterator[Model]:
    """Open a model file; tensors load lazily while the context is open."""
    where = str(path)
    p = Path(path)
    if p.is_dir():
        raise ModelReadError("directory", f"{where}: is a folder, not a model file")
    size = p.stat().st_size
    if size == 0:
        raise ModelReadError("empty-file", f"{where}: file is empty (0 bytes)")
    kind = sniff(p)
    if kind == "zip":
        raise ModelReadError(
            "unsupported-format", f"{where}: Keras v3 .keras archive — not supported yet"
        )
    if kind != "hdf5":
        raise ModelReadError("not-hdf5", f"{where}: not a Keras model file (not HDF5 or ZIP)")
    try:
        f = h5py.File(p, "r", locking=False)
    except OSError as exc:
        reason = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)
        code = "truncated" if "truncated" in reason or "eof" in reason else "unreadable-hdf5"
        raise ModelReadError(code, f"{where}: cannot open HDF5 file ({reason})") from None
    try:
        if not legacy_h5.claims(f):
            raise ModelReadError(
                "not-keras",
                f"{where}: HDF5 file without a Keras layout (no model_config, "
                "layer_names or model_weights)",
            )
        try:
            model = legacy_h5.read(f, where)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise ModelReadError("corrupt", f"{where}: {type(exc).__name__}: {exc}") from None
        yield model
    finally:
        f.close()
