"""Unzipped Keras saves (Keras 3.4+ `zipped=False`, Hugging Face uploads), §1.4: a folder with
`config.json`, `metadata.json` and `model.weights.h5` (or a sharded `model.weights.json`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wpipe.readers import lazy_h5py as h5py
from wpipe.readers import native, sharded
from wpipe.readers.base import Model, ModelReadError
from wpipe.readers.keras_config import read_json_file
from wpipe.readers.safefile import require_regular

FORMAT = "keras-dir"


def claims(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (
        os.path.lexists(folder / "model.weights.h5") or any(folder.glob("*.weights.json"))
    )


def _json(path: Path, where: str) -> dict | None:
    return read_json_file(path, path.name, where) if os.path.lexists(path) else None


@contextmanager
def open_folder(folder: Path, where: str) -> Iterator[Model]:
    config = _json(folder / "config.json", where)
    metadata = _json(folder / "metadata.json", where)
    weights = folder / "model.weights.h5"
    if os.path.lexists(weights):
        require_regular(weights, where)
        try:
            f = h5py.File(weights, "r", locking=False)
        except OSError as exc:
            raise ModelReadError(
                "corrupt", f"{where}: model.weights.h5 unreadable ({exc})"
            ) from None
        with f:
            yield native.read([f], where, FORMAT, config, metadata)
        return
    index = next(iter(sorted(folder.glob("*.weights.json"))), None)
    if index is None:
        raise ModelReadError("missing-member", f"{where}: folder has config.json but no weights")
    with sharded.open_shards(index, where, FORMAT, config, metadata) as model:
        yield model
