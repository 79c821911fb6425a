"""The few TensorFlow protobuf messages a checkpoint and a SavedModel carry, decoded by hand.

Protocol buffers' wire format (protobuf.dev/programming-guides/encoding): a message is a run
of (tag varint, value) pairs; the tag holds the field number and the wire type (0 varint,
1 fixed64, 2 length-delimited, 5 fixed32). `fields` reads one level of a message only, and
each message type below decodes its own nested messages by name, so the depth is fixed by
this file, never by the data. Every length is checked against the bytes that hold it, and
the number of fields of one message is capped, before anything is built.

Field numbers are those of TensorFlow's .proto files (tensorflow/core/protobuf/
tensor_bundle.proto, trackable_object_graph.proto, saved_object_graph.proto,
saved_model.proto, meta_graph.proto, framework/tensor_shape.proto, and Keras's
saved_metadata.proto).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wpipe.readers.base import ModelReadError

MAX_FIELDS = 1_000_000  # fields of one message (a 10,000-variable model has ~40,000 nodes)
MAX_RANK = 64
# children and variables of all nodes of one object graph (a 10,000-variable model has
# ~100,000): each becomes a Python tuple, so the total is what bounds the graph's memory
MAX_GRAPH_REFS = 500_000
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

Fields = dict[int, list]  # field number -> its values in order (int, or memoryview for LENGTH)


def varint(buf: memoryview, pos: int, where: str) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; at most 10 bytes (a uint64)."""
    value = shift = 0
    end = min(len(buf), pos + 10)
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
    raise ModelReadError("corrupt", f"{where}: truncated or overlong varint")


def fields(data: bytes | memoryview, what: str, where: str, limit: int = MAX_FIELDS) -> Fields:
    """One message's fields (not its sub-messages' fields); at most `limit` of them (each is
    a Python object of ~100-200 bytes)."""
    buf = memoryview(data)
    out: Fields = {}
    pos, count = 0, 0
    while pos < len(buf):
        tag, pos = varint(buf, pos, where)
        number, kind = tag >> 3, tag & 7
        if number == 0:
            raise ModelReadError("corrupt", f"{where}: {what} has a field numbered 0")
        if kind == VARINT:
            value, pos = varint(buf, pos, where)
        elif kind in (FIXED64, FIXED32):
            width = 8 if kind == FIXED64 else 4
            if pos + width > len(buf):
                raise ModelReadError("corrupt", f"{where}: {what} ends inside a fixed field")
            value = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
        elif kind == LENGTH:
            length, pos = varint(buf, pos, where)
            if length > len(buf) - pos:
                raise ModelReadError(
                    "corrupt", f"{where}: {what} field {number} claims {length:,} bytes, "
                    f"{len(buf) - pos:,} left"
                )  # fmt: skip
            value = buf[pos : pos + length]
            pos += length
        else:  # groups (3, 4) are not used by any of these messages
            raise ModelReadError("corrupt", f"{where}: {what} has wire type {kind}")
        count += 1
        if count > limit:
            raise ModelReadError("too-many-objects", f"{where}: {what} has over {limit:,} fields")
        out.setdefault(number, []).append(value)
    return out


def _int(f: Fields, number: int, default: int = 0) -> int:
    values = f.get(number)
    return values[-1] if values and isinstance(values[-1], int) else default


def _signed(value: int) -> int:
    """An int32/int64 field as written (negative numbers are 10-byte two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _bytes(f: Fields, number: int) -> bytes:
    values = f.get(number)
    return bytes(values[-1]) if values and isinstance(values[-1], memoryview) else b""


def _text(f: Fields, number: int) -> str:
    return _bytes(f, number).decode("utf-8", errors="replace")


def _messages(f: Fields, number: int) -> list[memoryview]:
    return [v for v in f.get(number, []) if isinstance(v, memoryview)]


# ---- tensor_bundle.proto -------------------------------------------------------------------


@dataclass
class BundleHeader:
    num_shards: int
    big_endian: bool


def bundle_header(data: bytes | memoryview, where: str) -> BundleHeader:
    f = fields(data, "bundle header", where)
    return BundleHeader(num_shards=_signed(_int(f, 1, 1)), big_endian=_int(f, 2) == 1)


@dataclass
class BundleEntry:
    dtype: int
    shape: tuple[int, ...] | None  # None: unknown rank
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored; None when the entry has none
    sliced: bool  # a partitioned variable's slice list (data lives under other keys)


def bundle_entry(data: bytes | memoryview, where: str) -> BundleEntry:
    f = fields(data, "bundle entry", where)
    shapes = _messages(f, 2)
    return BundleEntry(
        dtype=_int(f, 1),
        shape=tensor_shape(shapes[-1], where) if shapes else (),
        shard_id=_signed(_int(f, 3)),
        offset=_signed(_int(f, 4)),
        size=_signed(_int(f, 5)),
        crc32c=f[6][-1] if 6 in f and isinstance(f[6][-1], int) else None,
        sliced=bool(f.get(7)),
    )


def tensor_shape(data: memoryview, where: str) -> tuple[int, ...] | None:
    f = fields(data, "tensor shape", where)
    if _int(f, 3):
        return None
    dims = _messages(f, 2)
    if len(dims) > MAX_RANK:
        raise ModelReadError("corrupt", f"{where}: a tensor of rank {len(dims)} (limit {MAX_RANK})")
    shape = tuple(_signed(_int(fields(d, "tensor dim", where), 1)) for d in dims)
    if any(d < 0 for d in shape):  # -1: unknown, never in a saved tensor
        raise ModelReadError("corrupt", f"{where}: a saved tensor of shape {list(shape)}")
    return shape


# ---- trackable_object_graph.proto -----------------------------------------------------------


@dataclass
class TrackableNode:
    children: list[tuple[str, int]] = field(default_factory=list)  # (local_name, node_id)
    attributes: list[tuple[str, str, str]] = field(default_factory=list)  # name, full, key
    slot_variables: list[int] = field(default_factory=list)  # node ids of slot variables


def object_graph(data: bytes | memoryview, where: str) -> list[TrackableNode]:
    """TrackableObjectGraph: its nodes, numbered by position (node 0 is the root)."""
    nodes = []
    refs = 0
    for raw in _messages(fields(data, "object graph", where, MAX_GRAPH_REFS), 1):
        what = f"object graph (over {MAX_GRAPH_REFS:,} nodes and references): a node"
        f = fields(raw, what, where, MAX_GRAPH_REFS - refs)
        refs += 1 + sum(len(values) for values in f.values())
        if refs > MAX_GRAPH_REFS:
            raise ModelReadError(
                "too-many-objects",
                f"{where}: object graph has over {MAX_GRAPH_REFS:,} nodes and references",
            )
        node = TrackableNode()
        for ref in _messages(f, 1):
            r = fields(ref, "object reference", where)
            node.children.append((_text(r, 2), _int(r, 1)))
        for attr in _messages(f, 2):
            a = fields(attr, "serialized tensor", where)
            node.attributes.append((_text(a, 1), _text(a, 2), _text(a, 3)))
        for slot in _messages(f, 3):
            s = fields(slot, "slot variable reference", where)
            node.slot_variables.append(_int(s, 3))
        nodes.append(node)
    return nodes


# ---- Keras's saved_metadata.proto (keras_metadata.pb) ---------------------------------------


@dataclass
class KerasNode:
    node_id: int
    node_path: str  # `root.layer_with_weights-0`
    identifier: str  # `_tf_keras_layer`, `_tf_keras_model`, `_tf_keras_sequential`, ...
    metadata: bytes  # JSON text


def keras_metadata(data: bytes | memoryview, where: str) -> list[KerasNode]:
    """SavedMetadata: one entry per Keras object (field 1, SavedObject: node_id 2,
    node_path 3, identifier 4, metadata 5)."""
    out = []
    for raw in _messages(fields(data, "keras metadata", where), 1):
        f = fields(raw, "keras metadata node", where)
        out.append(KerasNode(_int(f, 2), _text(f, 3), _text(f, 4), _bytes(f, 5)))
    return out


# ---- saved_model.proto -> meta_graph.proto -> saved_object_graph.proto -----------------------


def saved_model_user_metadata(data: bytes | memoryview, where: str) -> dict[int, bytes]:
    """node id -> the Keras metadata JSON that TF 2.0-2.4 kept in saved_model.pb itself
    (SavedModel.meta_graphs 2 -> MetaGraphDef.object_graph_def 7 -> SavedObjectGraph.nodes 1
    -> SavedObject.user_object 4 -> SavedUserObject.metadata 3). Only these bytes are
    decoded: the graph and its functions are skipped over, never interpreted."""
    graphs = _messages(fields(data, "saved model", where), 2)
    if not graphs:
        return {}
    graph = _messages(fields(graphs[0], "meta graph", where), 7)
    if not graph:
        return {}
    out = {}
    for node_id, raw in enumerate(_messages(fields(graph[-1], "saved object graph", where), 1)):
        user = _messages(fields(raw, "saved object", where), 4)
        if user:
            metadata = _bytes(fields(user[-1], "saved user object", where), 3)
            if metadata:
                out[node_id] = metadata
    return out
