"""TensorFlow's tensor bundle (`<prefix>.index` + `<prefix>.data-0000k-of-0000n`), read without
TensorFlow: what `save_weights('ckpt')` (no `.h5`), `ModelCheckpoint(save_weights_only=True)`
and a SavedModel's `variables/` hold.

The `.index` file is a LevelDB-style immutable sorted table (TensorFlow's lib/io/table):
data blocks of prefix-compressed keys with restart points, an index block of block handles,
a 48-byte footer (metaindex and index handles, magic number), and after each block a
compression byte and the masked CRC32C of the block. Its first key, "", holds a
BundleHeaderProto; every other key is a tensor's name with a BundleEntryProto (dtype, shape,
shard, offset, size, masked CRC32C of the bytes). The data shards hold the tensors' raw
little-endian bytes back to back; a string tensor is its varint lengths, their checksum, then
its bytes (tensorflow/core/util/tensor_bundle/tensor_bundle.cc).

Bounds: the index is read whole only under MAX_INDEX_BYTES; every block handle, entry offset
and size is checked against the file that holds it before a byte is read; a tensor is read
only under h5safe.MAX_TENSOR_BYTES and only when its declared size equals its shape's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from wpipe.readers import tf_protos
from wpipe.readers.base import ModelReadError
from wpipe.readers.h5safe import MAX_TENSOR_BYTES
from wpipe.readers.safefile import open_regular, require_regular

MAGIC = 0xDB4775248B80FB57  # TensorFlow's kTableMagicNumber (LevelDB's)
FOOTER_BYTES = 48
TRAILER_BYTES = 5  # compression type + masked crc32c
MAX_INDEX_BYTES = 256 << 20  # ~100 bytes per tensor: millions of tensors
MAX_ENTRIES = 2_000_000
MAX_SHARDS = 10_000
MAX_STRING_BYTES = 16 << 20  # a string tensor we decode (the object graph: KB to a few MB)
CHUNK_BYTES = 16 << 20  # checksums are taken over at most this much at a time
HEADER_KEY = ""

# TensorFlow DataType enum (tensorflow/core/framework/types.proto) -> numpy dtype name.
DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
          9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32",
          23: "uint64"}  # fmt: skip
DT_STRING = 7
DT_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant",
            24: "float8_e5m2", 25: "float8_e4m3fn"}  # fmt: skip


def mask(crc: int) -> int:
    """LevelDB/TensorFlow's masked CRC (crc32c::Mask): stored checksums are masked so a CRC
    of data that itself holds CRCs stays well-distributed."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def crc32c(data: np.ndarray | bytes) -> int:
    """CRC32C of `data`, CHUNK_BYTES at a time (google_crc32c wants read-only buffers)."""
    view = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data.reshape(-1)
    view = view.view(np.uint8)
    view.flags.writeable = False
    crc = 0
    for start in range(0, len(view), CHUNK_BYTES):
        crc = google_crc32c.extend(crc, view[start : start + CHUNK_BYTES])
    return crc


def is_index(path: Path) -> bool:
    """A bundle's `.index` with at least one data shard beside it."""
    if not path.name.endswith(".index"):
        return False
    if os.path.lexists(path.parent / shard_name(path.stem, 0, 1)):  # the usual single shard
        return True  # (without listing a folder of a thousand checkpoints per index)
    return any(path.parent.glob(f"{_glob_safe(path.stem)}.data-*"))


def _glob_safe(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def shard_name(prefix: str, shard: int, count: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{count:05d}"


@dataclass
class Bundle:
    """A bundle's entries (name -> BundleEntry) and where its shards are."""

    index: Path
    where: str
    entries: dict[str, tf_protos.BundleEntry]
    shards: list[Path]
    shard_sizes: list[int]
    big_endian: bool

    def dtype_name(self, entry: tf_protos.BundleEntry) -> str:
        return DTYPES.get(entry.dtype) or DT_NAMES.get(entry.dtype) or f"tf-dtype-{entry.dtype}"

    def status(self, key: str) -> str:
        """'ok' for a tensor read as numbers, else '<code>: <reason>' (kept, not analysed)."""
        entry = self.entries[key]
        if entry.dtype == DT_STRING:
            return "not-numeric: string dtype"
        if entry.dtype not in DTYPES or entry.dtype == 10:
            return f"not-real: {self.dtype_name(entry)}"
        if entry.sliced:
            return "unsupported: a partitioned variable (slices under other keys)"
        declared = math.prod(entry.shape or ()) * np.dtype(DTYPES[entry.dtype]).itemsize
        if declared > MAX_TENSOR_BYTES:  # before any size is planned with
            raise ModelReadError(
                "oversized-tensor",
                f"{self.where}: {key} declares {declared:,} bytes (limit {MAX_TENSOR_BYTES:,})",
            )
        return "ok"

    def read(self, key: str) -> np.ndarray:
        """The tensor's values (bfloat16 widened to float32), its checksum verified."""
        entry = self.entries[key]
        dtype = np.dtype("uint16" if entry.dtype == 14 else DTYPES[entry.dtype])
        shape = entry.shape or ()
        self._place(key, entry)  # bounds first: a lying size is named as such
        expected = math.prod(shape) * dtype.itemsize
        if entry.size != expected:
            raise ModelReadError(
                "corrupt", f"{self.where}: {key} holds {entry.size:,} bytes, its shape "
                f"{list(shape)} of {dtype.name} needs {expected:,}"
            )  # fmt: skip
        raw = self._bytes(key, entry)
        values = raw.view(dtype.newbyteorder(">" if self.big_endian else "<")).reshape(shape)
        if self.big_endian or not values.dtype.isnative:
            values = values.astype(dtype.newbyteorder("="))
        if entry.dtype == 14:
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values

    def read_string(self, key: str) -> bytes:
        """A scalar string tensor's bytes (the object graph), its checksum verified."""
        entry = self.entries[key]
        if entry.dtype != DT_STRING or entry.shape not in ((), None):
            raise ModelReadError("corrupt", f"{self.where}: {key} is not a scalar string")
        if entry.size > MAX_STRING_BYTES:
            raise ModelReadError(
                "oversized-tensor",
                f"{self.where}: {key} is {entry.size:,} bytes (limit {MAX_STRING_BYTES:,})",
            )
        raw = memoryview(self._bytes(key, entry, checked=False))
        length, pos = tf_protos.varint(raw, 0, self.where)
        if pos + 4 + length != len(raw):
            raise ModelReadError("corrupt", f"{self.where}: string tensor {key} is malformed")
        # WriteStringTensor's checksum: each length as a uint32 (uint64 past 4 GiB), the
        # masked checksum of those lengths as written, then the string's bytes.
        width = 4 if length <= 0xFFFFFFFF else 8
        crc = google_crc32c.value(length.to_bytes(width, "little"))
        crc = google_crc32c.extend(crc, bytes(raw[pos:]))
        self._check(key, entry, crc)
        return bytes(raw[pos + 4 :])

    def verify(self, key: str) -> None:
        """Check one entry's checksum by reading its bytes (in chunks, nothing kept)."""
        entry = self.entries[key]
        if entry.dtype == DT_STRING:
            self.read_string(key) if entry.shape == () else None
            return
        self._bytes(key, entry, keep=False)

    def _bytes(
        self, key: str, entry: tf_protos.BundleEntry, keep: bool = True, checked: bool = True
    ) -> np.ndarray:
        shard = self._place(key, entry)
        crc = 0
        out = np.empty(entry.size if keep else 0, np.uint8)
        with open_regular(shard, self.where) as fh:
            fh.seek(entry.offset)
            for start in range(0, entry.size, CHUNK_BYTES):
                part = out[start : start + CHUNK_BYTES] if keep else np.empty(
                    min(CHUNK_BYTES, entry.size - start), np.uint8)  # fmt: skip
                if fh.readinto(memoryview(part)) != len(part):
                    raise ModelReadError(
                        "truncated", f"{self.where}: {shard.name} ends inside tensor {key}"
                    )
                if checked:
                    crc = _extend(crc, part)
        if checked:
            self._check(key, entry, crc)
        return out

    def _check(self, key: str, entry: tf_protos.BundleEntry, crc: int) -> None:
        if entry.crc32c is not None and mask(crc) != entry.crc32c:
            raise ModelReadError(
                "checksum-mismatch", f"{self.where}: tensor {key} fails its CRC32C checksum "
                f"(stored {entry.crc32c:#010x}, computed {mask(crc):#010x})"
            )  # fmt: skip

    def _place(self, key: str, entry: tf_protos.BundleEntry) -> Path:
        if not 0 <= entry.shard_id < len(self.shards):
            raise ModelReadError(
                "corrupt", f"{self.where}: {key} names shard {entry.shard_id} of {len(self.shards)}"
            )
        size = self.shard_sizes[entry.shard_id]
        if entry.size > MAX_TENSOR_BYTES:
            raise ModelReadError(
                "oversized-tensor",
                f"{self.where}: {key} declares {entry.size:,} bytes (limit {MAX_TENSOR_BYTES:,})",
            )
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > size:
            raise ModelReadError(
                "truncated", f"{self.where}: {key} lies at {entry.offset:,}+{entry.size:,}, "
                f"past the end of {self.shards[entry.shard_id].name} ({size:,} bytes)"
            )  # fmt: skip
        return self.shards[entry.shard_id]


def _extend(crc: int, part: np.ndarray) -> int:
    view = part.view()
    view.flags.writeable = False
    return google_crc32c.extend(crc, view)


def open_bundle(index: Path, where: str) -> Bundle:
    """The bundle whose `.index` is `index`: its table parsed and checked, its shards found."""
    size = require_regular(index, where).st_size
    if size > MAX_INDEX_BYTES:
        raise ModelReadError(
            "oversized-index",
            f"{where}: {index.name} is {size:,} bytes (limit {MAX_INDEX_BYTES:,})",
        )
    with open_regular(index, where) as fh:
        data = memoryview(fh.read(size + 1))
    if len(data) != size:
        raise ModelReadError("corrupt", f"{where}: {index.name} changed size while read")
    entries = _entries(data, f"{where}: {index.name}")
    header_raw = entries.pop(HEADER_KEY, None)
    if header_raw is None:
        raise ModelReadError("corrupt", f"{where}: {index.name} has no bundle header")
    header = tf_protos.bundle_header(header_raw, where)
    if not 1 <= header.num_shards <= MAX_SHARDS:
        raise ModelReadError(
            "corrupt", f"{where}: bundle header says {header.num_shards} shards (1-{MAX_SHARDS})"
        )
    prefix = index.name[: -len(".index")]
    shards = [index.parent / shard_name(prefix, i, header.num_shards)
              for i in range(header.num_shards)]  # fmt: skip
    sizes = [require_regular(s, f"{where}: data shard").st_size for s in shards]
    parsed = {key: tf_protos.bundle_entry(raw, f"{where}: {key}") for key, raw in entries.items()}
    return Bundle(index, where, parsed, shards, sizes, header.big_endian)


def _entries(data: memoryview, where: str) -> dict[str, memoryview]:
    """Every key and value of the table, blocks in index order, each block's CRC checked."""
    if len(data) < FOOTER_BYTES:
        raise ModelReadError("truncated", f"{where}: shorter than a table footer")
    footer = data[len(data) - FOOTER_BYTES :]
    if int.from_bytes(footer[-8:], "little") != MAGIC:
        raise ModelReadError("corrupt", f"{where}: not a TensorFlow table (bad magic number)")
    _, pos = _handle(footer, 0, where)  # metaindex: empty in bundles, not needed
    index_handle, _ = _handle(footer, pos, where)
    out: dict[str, memoryview] = {}
    for _, value in _block_entries(_block(data, index_handle, where), where):
        handle, _ = _handle(value, 0, where)
        for key, entry in _block_entries(_block(data, handle, where), where):
            name = key.decode("utf-8", errors="replace")
            if name in out:
                raise ModelReadError("corrupt", f"{where}: key {name!r} appears twice")
            out[name] = entry
            if len(out) > MAX_ENTRIES:
                raise ModelReadError("too-many-objects", f"{where}: over {MAX_ENTRIES:,} entries")
    return out


def _handle(buf: memoryview, pos: int, where: str) -> tuple[tuple[int, int], int]:
    offset, pos = tf_protos.varint(buf, pos, where)
    size, pos = tf_protos.varint(buf, pos, where)
    return (offset, size), pos


def _block(data: memoryview, handle: tuple[int, int], where: str) -> memoryview:
    offset, size = handle
    end = len(data) - FOOTER_BYTES
    if offset + size + TRAILER_BYTES > end:
        raise ModelReadError(
            "corrupt", f"{where}: block at {offset:,}+{size:,} runs past the table ({end:,} bytes)"
        )
    block = data[offset : offset + size + 1]  # contents and the compression byte
    stored = int.from_bytes(data[offset + size + 1 : offset + size + TRAILER_BYTES], "little")
    if mask(google_crc32c.value(bytes(block))) != stored:
        raise ModelReadError("checksum-mismatch", f"{where}: block at {offset:,} fails its CRC32C")
    if block[-1] != 0:
        raise ModelReadError(
            "unsupported-format",
            f"{where}: block compressed with type {block[-1]} (TensorFlow bundles are "
            "uncompressed; snappy is not read)",
        )
    return block[:-1]


def _block_entries(block: memoryview, where: str) -> list[tuple[bytes, memoryview]]:
    """A block's (key, value) pairs: each key shares a prefix with the one before it."""
    if len(block) < 4:
        raise ModelReadError("corrupt", f"{where}: block too short for its restart count")
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * restarts
    if restarts == 0 or limit < 0:
        raise ModelReadError("corrupt", f"{where}: block claims {restarts:,} restart points")
    out = []
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = tf_protos.varint(block, pos, where)
        fresh, pos = tf_protos.varint(block, pos, where)
        length, pos = tf_protos.varint(block, pos, where)
        if shared > len(key) or fresh > limit - pos or length > limit - pos - fresh:
            raise ModelReadError("corrupt", f"{where}: block entry overruns its block")
        key = key[:shared] + bytes(block[pos : pos + fresh])
        pos += fresh
        out.append((key, block[pos : pos + length]))
        pos += length
    return out


def bundle_files(index: Path) -> list[Path]:
    """The `.index` and the data shards beside it that belong to it (for hashing)."""
    stem = _glob_safe(index.name[: -len(".index")])
    return [index, *sorted(p for p in index.parent.glob(f"{stem}.data-*") if os.path.isfile(p))]
