"""Sharded native weights (Keras 3.10+): a `*.weights.json` index and its HDF5 shards, §4.6."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from wpipe.readers import h5safe, native
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import Model, ModelReadError
from wpipe.readers.keras_config import read_json_file
from wpipe.readers.safefile import open_regular

FORMAT = "weights-sharded"
MAX_SHARDS = 10_000  # Keras writes shards of ≥ 10 MB by default: 100 GB of weights


def is_index(path: Path) -> bool:
    return path.name.endswith(".weights.json")


def shard_names(index_path: Path, where: str) -> list[str]:
    """The shard files an index names, in first-mention order; names must be plain file names."""
    index = read_json_file(index_path, "shard index", where)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise ModelReadError("bad-json", f"{where}: shard index has no weight_map")
    names: list[str] = []
    seen: set[str] = set()
    for value in weight_map.values():
        if not isinstance(value, str | list):
            raise ModelReadError(
                "bad-json", f"{where}: shard index maps a weight to {type(value).__name__}, "
                "not a file name"
            )  # fmt: skip
        for name in [value] if isinstance(value, str) else value:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise ModelReadError(
                    "unsafe-archive", f"{where}: shard name {name!r} points outside the folder"
                )
            if name == index_path.name:
                raise ModelReadError("bad-json", f"{where}: shard index lists itself as a shard")
            if name not in seen:
                seen.add(name)
                names.append(name)
                if len(names) > MAX_SHARDS:
                    raise ModelReadError(
                        "too-many-objects", f"{where}: shard index lists over {MAX_SHARDS:,} shards"
                    )
    return names


@contextmanager
def open_shards(
    index_path: Path, where: str, fmt: str = FORMAT, config=None, metadata=None
) -> Iterator[Model]:
    names = shard_names(index_path, where)
    with ExitStack() as stack:
        files = []
        for name in names:
            shard = index_path.parent / name
            with open_regular(shard, f"{where}: shard") as fh:
                if not h5safe.is_hdf5(fh.read(8)):
                    raise ModelReadError("corrupt", f"{where}: shard {name} is not HDF5")
            files.append(stack.enter_context(h5py.File(shard, "r", locking=False)))
        yield native.read(files, where, fmt, config, metadata)
