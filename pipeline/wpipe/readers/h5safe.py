"""Safe, bounded, encoding-tolerant HDF5 access: no external links, no virtual or external
data, and nothing read whose declared size is implausible.

Every bound is checked on headers before any data is read: a dataset's declared size against
MAX_TENSOR_BYTES and against what its allocated storage can hold (MAX_COMPRESSION), a name
list's length against MAX_NAMES, an attribute's size against MAX_ATTR_BYTES, the objects a
walk visits against MAX_OBJECTS. Big tensors are read in slabs of SLAB_BYTES, so decoding
(bfloat16 → float32) never holds two full copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from wpipe.core.textsafe import display
from wpipe.readers import lazy_h5py as h5py
from wpipe.readers.base import ModelReadError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_TENSOR_BYTES = 4 << 30  # one tensor as stored; the largest real Keras weights are < 2 GB
MAX_COMPRESSION = 1000  # declared bytes per allocated byte (gzip of zeros reaches ~1000x)
COMPRESSION_CHECK_BYTES = 64 << 20  # smaller tensors may compress as well as they like
MAX_NAMES = 100_000  # entries of one layer_names / weight_names list
MAX_ATTR_BYTES = 32 << 20  # one attribute (model_config is the largest: a few MB)
MAX_OBJECTS = 200_000  # groups and datasets one file's walk may visit
SLAB_BYTES = 64 << 20


def text(value: Any) -> Any:
    """Normalise an attribute value: bytes -> str, arrays -> lists of normalised items."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):  # h5py hands invalid UTF-8 over as lone surrogates
        return display(value)
    if isinstance(value, np.ndarray):
        return [text(v) for v in value.tolist()] if value.ndim else text(value.item())
    if isinstance(value, list | tuple):
        return [text(v) for v in value]
    return value


def attr(obj: h5py.HLObject, name: str, where: str = "") -> Any:
    opened = _open_attr(obj, name, where)
    return None if opened is None else text(_attr_value(opened[0]))


def _open_attr(obj: h5py.HLObject, name: str, where: str) -> tuple[h5py.h5a.AttrID, int] | None:
    """The attribute and its element count (its size checked from the header), None when
    absent: one open serves the check and the read (h5py's AttributeManager opens it anew
    on every lookup, ~4x the cost on the hot path)."""
    raw = name.encode()
    if not h5py.h5a.exists(obj.id, raw):
        return None
    aid = h5py.h5a.open(obj.id, raw)
    return aid, _check_attr(obj, name, where, aid)


def _attr_value(aid: h5py.h5a.AttrID) -> Any:
    """What `obj.attrs[name]` gives (h5py's AttributeManager.__getitem__, step by step)."""
    shape = aid.shape
    if shape is None:  # an empty dataspace
        return h5py.Empty(aid.dtype)
    dtype = aid.dtype
    htype = h5py.h5t.py_create(dtype)
    if dtype.subdtype is not None:  # a top-level array type: numpy's shape and base type
        dtype, subshape = dtype.subdtype
        shape = shape + subshape
    arr = np.zeros(shape, dtype=dtype, order="C")
    aid.read(arr, mtype=htype)
    string_info = h5py.check_string_dtype(dtype)
    if string_info and string_info.length is None:  # vlen strings: bytes -> str, as h5py
        arr = np.array([b.decode("utf-8", "surrogateescape") for b in arr.flat],
                       dtype=dtype).reshape(arr.shape)  # fmt: skip
    return arr[()] if arr.ndim == 0 else arr


def _where(obj: h5py.HLObject, where: str) -> str:
    """The file a message names: `where`, else the HDF5 file's name (only for a message:
    obj.file builds a File object, ~50 µs, too dear for every attribute read)."""
    return where or obj.file.filename


def _check_attr(obj: h5py.HLObject, name: str, where: str, aid: h5py.h5a.AttrID) -> int:
    """The attribute's element count, refusing one too large to read (from its header)."""
    count = aid.get_space().get_simple_extent_npoints()
    try:  # fixed-size data; a variable-length string is bounded later, by jsonsafe
        size = aid.get_storage_size()
    except RuntimeError:  # HDF5 reports an empty attribute's 0 bytes as an error
        size = 0
    if size > MAX_ATTR_BYTES:
        raise ModelReadError(
            "too-many-objects",
            f"{_where(obj, where)}: attribute {name!r} of {obj.name} is {size:,} bytes "
            f"(limit {MAX_ATTR_BYTES:,})",
        )
    return count


def name_list(obj: h5py.HLObject, name: str, where: str = "") -> list[str] | None:
    """A list attribute, reassembled from `name0`, `name1`, … when Keras chunked it (>64 KB);
    at most MAX_NAMES entries."""
    opened = _open_attr(obj, name, where)
    if opened is not None:
        _check_names(obj, name, opened[1], where)
        value = text(_attr_value(opened[0]))
        # A layer without weights has `weight_names = []`, which h5py stores as empty float64.
        names = [v for v in value if isinstance(v, str)] if isinstance(value, list) else [value]
        return _unique(obj, name, names, where)
    chunks: list[str] = []
    index = 0
    while (opened := _open_attr(obj, f"{name}{index}", where)) is not None:
        _check_names(obj, name, len(chunks) + opened[1], where)
        chunks.extend(text(_attr_value(opened[0])))
        index += 1
    return _unique(obj, name, chunks, where) if index else None


def _unique(obj: h5py.HLObject, name: str, names: list, where: str) -> list:
    """Keras names layers and weights uniquely; a repeated name would be a duplicate key."""
    if len(set(names)) != len(names):
        seen: set = set()
        twice = next(n for n in names if n in seen or seen.add(n))
        raise ModelReadError(
            "duplicate-name",
            f"{_where(obj, where)}: {name} of {obj.name} lists {twice!r} more than once",
        )
    return names


def _check_names(obj: h5py.HLObject, name: str, count: int, where: str) -> None:
    if count > MAX_NAMES:
        raise ModelReadError(
            "too-many-objects",
            f"{_where(obj, where)}: {name} of {obj.name} lists {count:,} names "
            f"(limit {MAX_NAMES:,})",
        )


def groups_named(group: h5py.Group, leaf: str, where: str) -> list[tuple[str, h5py.Group]]:
    """(path, group) of every group below `group` whose last path part is `leaf`, following
    hard links only; stopped with a ModelReadError past MAX_OBJECTS objects. Low-level
    H5Ovisit: visititems builds a Python object per member, ~4x the cost on huge files."""
    names: list[bytes] = []
    wanted = leaf.encode()
    # members the visit will meet, counted from each group's header (H5Gget_info) as the
    # visit reaches the group, before it enters it: in name order H5Ovisit first reads and
    # sorts every member of a group, ~45 s for a group of two million, refused at once here
    declared = _members(group.id, where, 0)

    def visit(name: bytes, info: h5py.h5o.ObjInfo) -> None:
        nonlocal declared
        if info.type != h5py.h5o.TYPE_GROUP:
            return
        declared = _members(h5py.h5g.open(group.id, name), where, declared)
        if name.rsplit(b"/", 1)[-1] == wanted:
            names.append(name)

    h5py.h5o.visit(group.id, visit, info=True)
    return [
        (name.decode("utf-8", "replace"), h5py.Group(h5py.h5o.open(group.id, name)))
        for name in names
    ]


def _members(group: h5py.h5g.GroupID, where: str, before: int) -> int:
    """`before` plus the group's members; a `too-many-objects` error past MAX_OBJECTS."""
    total = before + group.get_num_objs()
    if total > MAX_OBJECTS:
        raise ModelReadError(
            "too-many-objects", f"{where}: more than {MAX_OBJECTS:,} groups and datasets"
        )
    return total


def child(group: h5py.Group, path: str, where: str) -> h5py.HLObject:
    """Resolve `path` below `group` one link at a time, refusing external and user-defined
    links (low-level calls: resolving every weight is on the ingest's hot path)."""
    node = _hard_path(group.id, path)
    if node is not None:
        return h5py.Dataset(node) if isinstance(node, h5py.h5d.DatasetID) else h5py.Group(node)
    node = group.id
    for part in path.split("/"):
        if not part:
            continue
        if not isinstance(node, h5py.h5g.GroupID):
            raise ModelReadError("missing-object", f"{where}: '{path}' crosses a dataset")
        raw = part.encode()
        try:  # no links.exists() first: one HDF5 call per part less on the hot path
            kind = node.links.get_info(raw).type
        except RuntimeError:  # HDF5's "name doesn't exist", or a real failure (raised again)
            if not node.links.exists(raw):
                raise ModelReadError(
                    "missing-object", f"{where}: '{path}' is not in the file"
                ) from None
            raise
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


def _hard_path(root: h5py.h5g.GroupID, path: str) -> h5py.h5o.ObjectID | None:
    """The object at `path` when every link on the way is a hard link (the common case),
    else None (the link-by-link walk then resolves it, or says why not). Each prefix's link
    is checked before anything goes through it, so no external link is ever followed; the
    object is opened once, not each group on the way (half the cost of the walk)."""
    parts = [part.encode() for part in path.split("/") if part]
    if not parts:
        return None
    prefix = b""
    for part in parts:
        prefix = prefix + b"/" + part if prefix else part
        try:
            if root.links.get_info(prefix).type != h5py.h5l.TYPE_HARD:
                return None
        except (RuntimeError, KeyError, ValueError):  # missing, crossing a dataset, ...
            return None
    try:
        return h5py.h5o.open(root, prefix)
    except (RuntimeError, KeyError, ValueError):
        return None


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


def tensor_fields(ds: h5py.Dataset, where: str) -> dict[str, Any]:
    """A Tensor's shape, logical dtype, loader and status from its dataset, whose type and
    shape are fetched once (each fetch builds an HDF5 object: ~5 µs, a tenth of a small
    tensor's read)."""
    dtype, shape = ds.dtype, ds.shape
    return {
        "shape": tuple(int(d) for d in shape or ()),
        "dtype": _logical(dtype),
        "load": lazy_array(ds, where, dtype, shape),
        "status": _status(ds, where, dtype, shape),
    }


def logical_dtype(ds: h5py.Dataset) -> str:
    """float32, float16, …; a 2-byte opaque type is bfloat16 (Keras stores it so)."""
    return _logical(ds.dtype)  # once: each access takes h5py's global lock


def _logical(dtype: np.dtype) -> str:
    # Keras ≥3.0.5 also marks these with attribute dtype="bfloat16"; older writers do not.
    if dtype.kind == "V" and dtype.itemsize == 2:
        return "bfloat16"
    return dtype.name


def tensor_status(ds: h5py.Dataset, where: str) -> str:
    """'ok' for a tensor that can be analysed, else '<code>: <reason>' (statistics are then
    not computed); a hostile declared size raises instead, before anything is read."""
    return _status(ds, where, ds.dtype, ds.shape)


def _status(ds: h5py.Dataset, where: str, dtype: np.dtype, shape: tuple | None) -> str:
    kind = dtype.kind
    if h5py.check_enum_dtype(dtype) is not None:
        return f"not-real: enum of {dtype.name} (labels, not values)"
    if kind == "c":
        return f"not-real: {dtype.name} (complex; no real view is taken)"
    if kind == "V" and _logical(dtype) != "bfloat16":
        what = "compound" if dtype.names else f"opaque {dtype.itemsize}-byte"
        return f"not-real: {what} dtype"
    if kind in "SUOa":
        return "not-numeric: string dtype"
    if kind not in "biuf" and _logical(dtype) != "bfloat16":
        return f"not-real: {dtype}"
    if shape is None:  # h5py gives such a dataset no size (the read would be h5py.Empty)
        raise ModelReadError("corrupt", f"{where}: {ds.name} has a null dataspace (no shape)")
    declared = math.prod(shape) * dtype.itemsize
    if declared > MAX_TENSOR_BYTES:
        raise ModelReadError(
            "oversized-tensor",
            f"{where}: {ds.name} declares {declared:,} bytes (limit {MAX_TENSOR_BYTES:,})",
        )
    stored = ds.id.get_storage_size()
    if declared and stored == 0:
        return "unallocated: never written, only its fill value"
    if declared > COMPRESSION_CHECK_BYTES and declared > stored * MAX_COMPRESSION:
        raise ModelReadError(
            "compression-bomb",
            f"{where}: {ds.name} declares {declared:,} bytes in {stored:,} stored "
            f"(over {MAX_COMPRESSION}x)",
        )
    return "ok"


def _size(shape: tuple | None) -> int:
    """Elements of a dataset of `shape` (as h5py's Dataset.size: 0 for a null dataspace)."""
    return 0 if shape is None else math.prod(shape)


def read_array(
    ds: h5py.Dataset, dtype: np.dtype | None = None, shape: tuple | None = None
) -> np.ndarray:
    """The dataset's values (bfloat16 widened to float32 exactly), read in slabs along the
    first axis so no decoding step holds a second full copy. `dtype`, `shape`: the
    dataset's, when the caller has them."""
    if dtype is None:
        dtype, shape = ds.dtype, ds.shape  # once: each access takes h5py's global lock
    size = _size(shape)
    if dtype.kind in "fiu" and dtype.isnative and shape and 0 < size * dtype.itemsize <= SLAB_BYTES:
        # what ds[()] reads, without its selection machinery (~3x the cost of a small read)
        out = np.empty(shape, dtype=dtype)
        ds.id.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        return out
    bf16 = _logical(dtype) == "bfloat16"
    if not shape or size * dtype.itemsize <= SLAB_BYTES:
        return _widen(np.ascontiguousarray(ds[()])) if bf16 else ds[()]
    out = np.empty(shape, dtype=np.float32 if bf16 else dtype)
    row_bytes = max(1, (size // shape[0]) * dtype.itemsize)
    step = max(1, SLAB_BYTES // row_bytes)
    for start in range(0, shape[0], step):
        part = ds[start : start + step]
        out[start : start + step] = _widen(np.ascontiguousarray(part)) if bf16 else part
    return out


def _widen(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def lazy_array(
    ds: h5py.Dataset, where: str, dtype: np.dtype | None = None, shape: tuple | None = None
) -> Callable[[], np.ndarray]:
    """A loader that reads the dataset when called, naming the file if the read fails."""

    def load() -> np.ndarray:
        try:
            return read_array(ds, dtype, shape)
        except (OSError, ValueError) as exc:
            raise ModelReadError("corrupt", f"{where}: cannot read {ds.name} ({exc})") from None
        except MemoryError:
            raise ModelReadError(
                "out-of-memory", f"{where}: not enough memory to read {ds.name}"
            ) from None

    load.dataset = ds  # a plain read of one dataset (h5layout may read its bytes itself)
    return load


def is_hdf5(head: bytes) -> bool:
    return head.startswith(HDF5_SIGNATURE)
