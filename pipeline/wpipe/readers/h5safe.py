"""Safe, encoding-tolerant HDF5 access: no external links, no virtual or external data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from wpipe.readers.base import ModelReadError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def text(value: Any) -> Any:
    """Normalise an attribute value: bytes -> str, arrays -> lists of normalised items."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [text(v) for v in value.tolist()] if value.ndim else text(value.item())
    if isinstance(value, list | tuple):
        return [text(v) for v in value]
    return value


def attr(obj: h5py.HLObject, name: str) -> Any:
    return text(obj.attrs[name]) if name in obj.attrs else None


def name_list(obj: h5py.HLObject, name: str) -> list[str] | None:
    """A list attribute, reassembled from `name0`, `name1`, … when Keras chunked it (>64 KB)."""
    if name in obj.attrs:
        value = text(obj.attrs[name])
        # A layer without weights has `weight_names = []`, which h5py stores as empty float64.
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else [value]
    chunks: list[str] = []
    index = 0
    while f"{name}{index}" in obj.attrs:
        chunks.extend(text(obj.attrs[f"{name}{index}"]))
        index += 1
    return chunks if index else None


def child(group: h5py.Group, path: str, where: str) -> h5py.HLObject:
    """Resolve `path` below `group` one link at a time, refusing external and user-defined
    links (low-level calls: resolving every weight is on the ingest's hot path)."""
    node = group.id
    for part in path.split("/"):
        if not part:
            continue
        if not isinstance(node, h5py.h5g.GroupID):
            raise ModelReadError("missing-object", f"{where}: '{path}' crosses a dataset")
        raw = part.encode()
        if not node.links.exists(raw):
            raise ModelReadError("missing-object", f"{where}: '{path}' is not in the file")
        kind = node.links.get_info(raw).type
        if kind == h5py.h5l.TYPE_EXTERNAL:
            target = node.links.get_val(raw)[0].decode(errors="replace")
            raise ModelReadError(
                "external-link", f"{where}: '{path}' is an external link to {target}"
            )
        if kind not in (h5py.h5l.TYPE_HARD, h5py.h5l.TYPE_SOFT):
            raise ModelReadError("external-link", f"{where}: '{path}' is a user-defined link")
        try:
            node = h5py.h5o.open(node, raw)
        except KeyError:
            raise ModelReadError(
                "missing-object", f"{where}: '{path}' is a dangling link"
            ) from None
    if isinstance(node, h5py.h5d.DatasetID):
        return h5py.Dataset(node)
    return h5py.Group(node)


def dataset(group: h5py.Group, path: str, where: str) -> h5py.Dataset:
    node = child(group, path, where)
    if not isinstance(node, h5py.Dataset):
        raise ModelReadError("missing-object", f"{where}: '{path}' is not a dataset")
    if node.is_virtual:
        raise ModelReadError("virtual-dataset", f"{where}: '{path}' is a virtual dataset")
    if node.external:
        raise ModelReadError(
            "external-storage", f"{where}: '{path}' stores its data in an external file"
        )
    return node


def logical_dtype(ds: h5py.Dataset) -> str:
    """float32, float16, …; a 2-byte opaque type is bfloat16 (Keras stores it so)."""
    # Keras ≥3.0.5 also marks these with attribute dtype="bfloat16"; older writers do not.
    if ds.dtype.kind == "V" and ds.dtype.itemsize == 2:
        return "bfloat16"
    return ds.dtype.name


def read_array(ds: h5py.Dataset) -> np.ndarray:
    """The dataset's values; bfloat16 is widened to float32 exactly."""
    if logical_dtype(ds) == "bfloat16":
        raw = np.ascontiguousarray(ds[()]).view(np.uint16)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return ds[()]


def lazy_array(ds: h5py.Dataset, where: str) -> Callable[[], np.ndarray]:
    """A loader that reads the dataset when called, naming the file if the read fails."""

    def load() -> np.ndarray:
        try:
            return read_array(ds)
        except (OSError, ValueError) as exc:
            raise ModelReadError("corrupt", f"{where}: cannot read {ds.name} ({exc})") from None

    return load


def is_hdf5(head: bytes) -> bool:
    return head.startswith(HDF5_SIGNATURE)
