"""A minimal writer of TensorFlow tensor bundles, for hostile cases real TensorFlow never writes
(deep or cyclic object graphs, lying offsets and sizes). Encodes the wire format and table
layout independently of wpipe's reader (LevelDB table_format.md; tensor_bundle.proto)."""

from __future__ import annotations

from pathlib import Path

import google_crc32c
import numpy as np


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return varint(number << 3 | 2) + varint(len(value)) + value


def masked(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def entry(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int | None,
          shard: int = 0) -> bytes:  # fmt: skip
    dims = b"".join(field(2, field(1, d)) for d in shape)
    out = field(1, dtype) + field(2, dims) + field(3, shard) + field(4, offset) + field(5, size)
    if crc is not None:
        out += varint(6 << 3 | 5) + crc.to_bytes(4, "little")
    return out


def block(items: list[tuple[bytes, bytes]], compression: int = 0) -> tuple[bytes, bytes]:
    """(contents, trailer): keys written whole (shared prefix 0), one restart point."""
    body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in items)
    body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")
    kind = bytes([compression])
    return body, kind + masked(body + kind).to_bytes(4, "little")


def table(items: list[tuple[bytes, bytes]], compression: int = 0) -> bytes:
    data, trailer = block(sorted(items), compression)
    out = data + trailer
    meta, meta_trailer = block([])
    meta_at = len(out)
    out += meta + meta_trailer
    index, index_trailer = block([(b"\xff" * 8, varint(0) + varint(len(data)))])
    index_at = len(out)
    out += index + index_trailer
    footer = varint(meta_at) + varint(len(meta)) + varint(index_at) + varint(len(index))
    return out + footer.ljust(40, b"\x00") + (0xDB4775248B80FB57).to_bytes(8, "little")


def string_tensor(value: bytes) -> tuple[bytes, int]:
    """A scalar string as a bundle stores it, and its masked checksum (WriteStringTensor)."""
    length = len(value).to_bytes(4, "little")
    crc = google_crc32c.value(length)
    length_crc = ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    stored = varint(len(value)) + length_crc.to_bytes(4, "little")
    crc = google_crc32c.extend(crc, length_crc.to_bytes(4, "little"))
    crc = google_crc32c.extend(crc, value)
    return stored + value, ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def node(children: list[tuple[str, int]] = (), attributes: list[tuple[str, str]] = ()) -> bytes:
    """A TrackableObject: children (local name, node id), variables (full name, key)."""
    out = b"".join(field(1, field(1, i) + field(2, n.encode())) for n, i in children)
    for full, key in attributes:
        out += field(
            2, field(1, b"VARIABLE_VALUE") + field(2, full.encode()) + field(3, key.encode())
        )
    return out


def graph(nodes: list[bytes]) -> bytes:
    return b"".join(field(1, n) for n in nodes)


def write_bundle(prefix: Path, tensors: dict[str, np.ndarray], nodes: list[bytes] | None,
                 num_shards: int = 1, edit=None) -> None:  # fmt: skip
    """`prefix`.index + `prefix`.data-00000-of-0000n: float32 tensors and an object graph.
    `edit(key, entry_fields)` may change an entry's (dtype, shape, offset, size, crc) first."""
    data = b""
    items = [(b"", field(1, num_shards))]
    blobs = {k: (1, v.shape, v.astype("<f4").tobytes()) for k, v in tensors.items()}
    if nodes is not None:
        raw, crc = string_tensor(graph(nodes))
        blobs["_CHECKPOINTABLE_OBJECT_GRAPH"] = (7, (), raw, crc)
    for key, blob in blobs.items():
        dtype, shape, raw = blob[:3]
        crc = blob[3] if len(blob) > 3 else masked(raw)
        fields = [dtype, tuple(shape), len(data), len(raw), crc]
        if edit is not None:
            edit(key, fields)
        items.append((key.encode(), entry(*fields)))
        data += raw
    prefix.with_name(prefix.name + ".index").write_bytes(table(items))
    prefix.with_name(f"{prefix.name}.data-00000-of-{num_shards:05d}").write_bytes(data)


def dense_bundle(prefix: Path, edit=None) -> dict[str, np.ndarray]:
    """A one-Dense-layer model's checkpoint as tf_keras lays it out; its arrays by key."""
    kernel = np.arange(6, dtype="f4").reshape(2, 3) - 2.5
    bias = np.array([0.5, -1.0, 2.0], "f4")
    keys = {k: f"layer_with_weights-0/{k}/.ATTRIBUTES/VARIABLE_VALUE" for k in ("kernel", "bias")}
    nodes = [
        node([("layer-0", 1), ("layer_with_weights-0", 1)]),
        node([("kernel", 2), ("bias", 3)]),
        node(attributes=[("dense/kernel", keys["kernel"])]),
        node(attributes=[("dense/bias", keys["bias"])]),
    ]
    arrays = {keys["kernel"]: kernel, keys["bias"]: bias}
    write_bundle(prefix, arrays, nodes, edit=edit)
    return arrays
