"""Hugging Face safetensors exports (KerasHub's `export_to_transformers`, transformers'
`save_pretrained`): `model.safetensors`, or shards listed by `model.safetensors.index.json`,
with the `config.json` beside them.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range (`data_offsets`, relative to the end of the header), then
the tensors' bytes, back to back. Everything the header claims is checked before anything is
spent: its length against MAX_HEADER_BYTES and the file, its JSON within jsonsafe's bounds,
the tensor count, each dtype and shape, and that the byte ranges lie in the file, hold exactly
dtype x shape bytes and tile the data without gap or overlap (the rule the safetensors library
itself enforces). Only then does the `safetensors` package read a tensor (bfloat16, which
numpy lacks, is read from its checked range and widened exactly to float32).

Names are PyTorch's module paths (`model.layers.0.self_attn.q_proj.weight`): the scopes give
the layer (scopes.py, as for a Hugging Face `tf_model.h5`), the generic `weight` its role from
scope and rank (inferred.py). A PyTorch `Linear` keeps its kernel as (out, in), the transpose
of Keras's: such tensors are tagged `layout = out_in`; GPT-2's `Conv1D` keeps Keras's (in, out).
What a safetensors export cannot tell: layer classes and configs (inferred from names and
shapes), trainable flags (all taken as trainable), optimizer state (none is stored).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from wpipe.readers import hf_config, inferred, jsonsafe, scopes, sharded
from wpipe.readers.base import Layer, Model, ModelReadError, Tensor
from wpipe.readers.h5safe import MAX_TENSOR_BYTES
from wpipe.readers.keras_config import is_trainable, parse_json, read_json_file, role_of
from wpipe.readers.safefile import open_regular, require_regular

FORMAT = "safetensors"
SHARDED_FORMAT = "safetensors-sharded"
SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
LENGTH_BYTES = 8
MAX_HEADER_BYTES = jsonsafe.MAX_JSON_BYTES  # ~150 bytes a tensor: 200k tensors fit in 32 MB
MAX_TENSORS = 200_000  # one model, all shards: the largest MoE checkpoints hold ~100k
MAX_RANK = 64
METADATA = "__metadata__"
ROOT_LAYER = "top_level_model_weights"  # tensors named without a scope (as Keras's own name)
# numpy dtypes of safetensors' codes; BF16 is read as uint16 and widened; the others are kept
# with a status (no numpy dtype, or not real values): bits per element, for the size check.
NUMPY = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32",
         "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
         "U8": "uint8"}  # fmt: skip
OTHER_BITS = {"BF16": 16, "BOOL": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F6_E2M3": 6,
              "F6_E3M2": 6, "F4": 4, "C64": 64}  # fmt: skip
# Hugging Face model types whose projections are GPT-2's Conv1D (weight (in, out), as Keras).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
_CONV1D_NAME = re.compile(r"(^|\.)(c_attn|q_attn|c_fc|c_proj)\.weight$")  # their modules
# An output head tied to the input embedding, and the embedding tables it may repeat.
TIED_HEAD = "lm_head.weight"
EMBEDDING_TABLES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight",
                    "shared.weight", "embed_in.weight")  # fmt: skip
COMPARE_CHUNK = 16 << 20
SHOWN = 80  # characters of a name or value a message repeats (a header may hold 32 MB)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a checked header: its name, safetensors dtype code, shape and absolute
    byte range in its file."""

    name: str
    code: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclasses.dataclass
class Header:
    path: Path
    where: str
    entries: dict[str, Entry]


def is_index(path: Path) -> bool:
    return path.name.endswith(INDEX_SUFFIX)


def claims(path: Path) -> bool:
    return path.name.endswith(SUFFIX)


def read_header(path: Path, where: str) -> Header:
    """The file's header, every bound checked (see the module's docstring)."""
    size = require_regular(path, where).st_size
    with open_regular(path, where) as fh:
        head = fh.read(LENGTH_BYTES)
        if len(head) < LENGTH_BYTES:
            raise ModelReadError("truncated", f"{where}: {len(head)} bytes, shorter than the "
                                 "8-byte header length of a safetensors file")  # fmt: skip
        length = int.from_bytes(head, "little")
        if length > MAX_HEADER_BYTES:
            raise ModelReadError("oversized-metadata", f"{where}: safetensors header of "
                                 f"{length:,} bytes (limit {MAX_HEADER_BYTES:,})")  # fmt: skip
        if LENGTH_BYTES + length > size:
            raise ModelReadError("truncated", f"{where}: safetensors header of {length:,} "
                                 f"bytes in a file of {size:,}")  # fmt: skip
        raw = fh.read(length)
    parsed = parse_json(raw, "safetensors header", where) or {}
    metadata = parsed.pop(METADATA, None)
    if metadata is not None and not isinstance(metadata, dict):
        raise ModelReadError("bad-json", f"{where}: safetensors {METADATA} is not an object")
    if len(parsed) > MAX_TENSORS:
        raise ModelReadError("too-many-objects", f"{where}: {len(parsed):,} tensors "
                             f"(limit {MAX_TENSORS:,})")  # fmt: skip
    start = LENGTH_BYTES + length
    entries = {name: _entry(name, spec, start, where) for name, spec in parsed.items()}
    _check_tiling(list(entries.values()), start, size, where)
    return Header(path, where, entries)


def _entry(name: str, spec: Any, start: int, where: str) -> Entry:
    tensor = f"{where}: tensor {_shown(name)}"
    if not isinstance(spec, dict):
        raise ModelReadError("bad-json", f"{tensor}: its header entry is not an object")
    code, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(code, str) or (code not in NUMPY and code not in OTHER_BITS):
        raise ModelReadError("corrupt", f"{tensor} has unknown dtype {_shown(code)}")
    if not _ints(shape, len(shape) if isinstance(shape, list) else 0) or len(shape) > MAX_RANK:
        raise ModelReadError("corrupt", f"{tensor} has shape {_shown(shape)}")
    if not _ints(offsets, 2) or offsets[0] > offsets[1]:
        raise ModelReadError("corrupt", f"{tensor} has data_offsets {_shown(offsets)}")
    bits = np.dtype(NUMPY[code]).itemsize * 8 if code in NUMPY else OTHER_BITS[code]
    needed = (math.prod(shape) * bits + 7) // 8
    held = offsets[1] - offsets[0]
    if needed != held:
        raise ModelReadError("corrupt", f"{tensor} is {code} {_shown(shape)}, {needed:,} "
                             f"bytes, but its data_offsets hold {held:,}")  # fmt: skip
    if needed > MAX_TENSOR_BYTES:
        raise ModelReadError("oversized-tensor", f"{tensor} declares {needed:,} bytes "
                             f"(limit {MAX_TENSOR_BYTES:,})")  # fmt: skip
    return Entry(name, code, tuple(shape), start + offsets[0], start + offsets[1])


def _shown(value: Any) -> str:
    """A file's name or value for a one-line message: repr, at most SHOWN characters."""
    text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 1] + "…"


def _ints(value: Any, n: int) -> bool:
    """A list of n non-negative ints (JSON's true/false are not sizes)."""
    return (isinstance(value, list) and len(value) == n
            and all(type(v) is int and v >= 0 for v in value))  # fmt: skip


def _check_tiling(entries: list[Entry], start: int, size: int, where: str) -> None:
    """Byte ranges inside the file, back to back from the header's end: no gap, no overlap."""
    at = start
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        tensor = f"{where}: tensor {_shown(entry.name)}"
        if entry.end > size:
            raise ModelReadError("truncated", f"{tensor} ends at byte {entry.end:,} of a "
                                 f"{size:,}-byte file")  # fmt: skip
        if entry.begin != at:
            what = "overlaps the one before" if entry.begin < at else "leaves a gap before it"
            raise ModelReadError("corrupt", f"{tensor} {what} (bytes {entry.begin:,}-"
                                 f"{entry.end:,})")  # fmt: skip
        at = entry.end
    if at != size:
        raise ModelReadError("corrupt", f"{where}: {size - at:,} bytes after the last tensor")


# --- reading tensors -------------------------------------------------------------------------


def _status(code: str) -> str:
    if code in NUMPY or code == "BF16":
        return "ok"
    return f"not-real: {code} (no numpy dtype)" if code != "BOOL" else "not-real: bool"


def _dtype_name(code: str) -> str:
    return NUMPY.get(code) or {"BF16": "bfloat16", "BOOL": "bool"}.get(code, code.lower())


def _loader(opened: Any, header: Header, entry: Entry) -> Callable[[], np.ndarray]:
    """Reads the tensor when called: through safetensors' numpy interface, or (bfloat16) its
    checked byte range widened exactly to float32."""

    def load() -> np.ndarray:
        try:
            if entry.code != "BF16":
                return opened.get_tensor(entry.name)
            with open_regular(header.path, header.where) as fh:
                fh.seek(entry.begin)
                raw = np.frombuffer(fh.read(entry.end - entry.begin), dtype="<u2")
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry.shape)
        except MemoryError:
            raise ModelReadError("out-of-memory", f"{header.where}: not enough memory") from None
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelReadError(
                "corrupt", f"{header.where}: cannot read {_shown(entry.name)} ({exc})"
            ) from None

    return load


def _opened(stack: ExitStack, header: Header) -> Any:
    """The file opened by safetensors (kept open by `stack`) when it holds a tensor numpy
    reads; None when it holds none (bfloat16 only)."""
    if not any(e.code in NUMPY for e in header.entries.values()):
        return None
    from safetensors import safe_open  # imported on first use: the CLI's start-up stays light

    try:
        return stack.enter_context(safe_open(str(header.path), framework="numpy"))
    except Exception as exc:  # the library's own SafetensorError: a file it refuses
        raise ModelReadError("corrupt", f"{header.where}: {exc}") from None


# --- layers and roles --------------------------------------------------------------------------


@dataclasses.dataclass
class Stored:
    """A tensor to place: its full name, entry, source name, loader, and the header (file)
    it is in; `tied`: the sources of copies of it dropped as tied (`_untied`)."""

    name: str
    entry: Entry
    source: str
    load: Callable[[], np.ndarray]
    header: Header
    tied: tuple[str, ...] = ()


def _natural(name: str) -> list:
    """`layers.10` after `layers.2`: one order whatever the shards or the header's order."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


def build_layers(stored: list[Stored], conv1d: set[str], where: str) -> list[Layer]:
    """Leaf layers by the names' scopes (dots are PyTorch's scope separator); `conv1d`: the
    names of GPT-2 Conv1D weights, kept (in, out)."""
    stored = sorted(stored, key=lambda s: _natural(s.name))
    by_scoped = {s.name.replace(".", "/"): s for s in stored}
    if len(by_scoped) != len(stored):  # `a.b` and `a/b`: one place, two tensors
        raise ModelReadError("duplicate-name", f"{where}: two tensors are named alike once "
                             "their scopes are split at dots and slashes")  # fmt: skip
    owned = scopes.split_by_scope("", list(by_scoped)) or {"": [(n, n.split("/")) for n in
                                                               by_scoped]}  # fmt: skip
    layers = []
    for path, pairs in owned.items():
        path = path or ROOT_LAYER
        name = path.rsplit("/", 1)[-1]
        layers.append(_layer(path, name, [(by_scoped[full], rest) for full, rest in pairs],
                             conv1d))  # fmt: skip
    return layers


def _layer(path: str, name: str, parts: list[tuple[Stored, list[str]]], conv1d: set) -> Layer:
    named = []
    for s, rest in parts:
        last = rest[-1]
        if last == inferred.GENERIC or last in inferred.NAMED_ROLES:  # as for a tf_model.h5
            renamed, role = inferred.role_from_name(name, last, s.entry.shape)
        else:
            renamed, role = last, role_of(last)
        weight_name = "/".join([*rest[:-1], renamed])
        out_in = last == inferred.GENERIC and role == "kernel" and s.name not in conv1d
        named.append((s, weight_name, role, "out_in" if out_in else "keras"))
    named = _norm_shift(named)
    variables = [(w, r, _keras_shape(s.entry.shape, lay)) for s, w, r, lay in named]
    class_name = inferred.layer_class(name, variables)
    tensors = [
        Tensor(
            weight_name=weight_name,
            role=role,
            trainable=is_trainable(role, class_name, True),
            source_name=s.source,
            shape=s.entry.shape,
            dtype=_dtype_name(s.entry.code),
            load=s.load,
            layout=layout,
            status=_status(s.entry.code),
            tied_sources=s.tied,
        )
        for s, weight_name, role, layout in named
    ]
    config = inferred.wrapped_config(class_name, variables)
    return Layer(path, name, class_name, config, True, tensors)


def _norm_shift(named: list[tuple]) -> list[tuple]:
    """PyTorch's LayerNorm names its shift `bias`: beside a scale (`gamma`) it is the shift
    Keras calls `beta`, so the layer is told a LayerNormalization as its tf_model.h5 twin."""
    roles = {r for _, _, r, _ in named}
    if "gamma" not in roles or "beta" in roles:
        return named
    return [(s, "beta" if w == "bias" else w, "beta" if w == "bias" else r, lay)
            for s, w, r, lay in named]  # fmt: skip


def _keras_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    """A PyTorch (out, in, *k) weight's shape in Keras's order (*k, in, out)."""
    if layout != "out_in" or len(shape) < 2:
        return shape
    return (*shape[2:], shape[1], shape[0])


def _conv1d(config: dict | None, names: list[str]) -> set[str]:
    """The weights of GPT-2's Conv1D modules, (in, out) as Keras's: named so in a model whose
    config says a GPT-2 family type, or that has no config (its head, a Linear, is (out, in);
    Qwen 1 names Linear layers c_attn too, hence the model type)."""
    if config is not None and config.get("model_type") not in CONV1D_MODEL_TYPES:
        return set()
    return {n for n in names if _CONV1D_NAME.search(n)}


# --- models ------------------------------------------------------------------------------------


def _untied(stored: list[Stored]) -> list[Stored]:
    """KerasHub writes a causal LM's output head tied to its input embedding twice:
    `lm_head.weight` holds the embedding's bytes again (transformers' own save keeps one).
    Keras's `count_params()` counts the variable once: so does wpipe, the head becoming the
    embedding's `tied_sources` (tied.py's rule: same shape, dtype and bytes)."""
    by_name = {s.name: s for s in stored}
    dropped = set()
    for head in (s for s in stored if s.name.endswith(TIED_HEAD)):
        twin = next((s for s in stored if s is not head and s.name.endswith(EMBEDDING_TABLES)
                     and _same_bytes(s, head)), None)  # fmt: skip
        if twin is not None:
            by_name[twin.name] = dataclasses.replace(twin, tied=(*twin.tied, head.source))
            dropped.add(head.name)
    return [by_name[s.name] for s in stored if s.name not in dropped]


def _same_bytes(a: Stored, b: Stored) -> bool:
    """Same dtype, shape and stored bytes, compared a chunk at a time."""
    if (a.entry.code, a.entry.shape) != (b.entry.code, b.entry.shape):
        return False
    with open_regular(a.header.path, a.header.where) as fa, \
            open_regular(b.header.path, b.header.where) as fb:  # fmt: skip
        fa.seek(a.entry.begin)
        fb.seek(b.entry.begin)
        left = a.entry.end - a.entry.begin
        while left > 0:
            n = min(left, COMPARE_CHUNK)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def _model(path: Path, where: str, fmt: str, stored: list[Stored]) -> Model:
    if not stored:
        raise ModelReadError("not-keras", f"{where}: safetensors without tensors (no weights)")
    found = hf_config.read_beside(path, where)
    config = found[1] if found else None
    conv1d = _conv1d(config, [s.name for s in stored])
    layers = build_layers(_untied(stored), conv1d, where)
    return Model(
        path=where,
        format=fmt,
        keras_version=None,
        backend=None,
        model_class=hf_config.architecture(config) if config else None,
        optimizer=None,
        loss=None,
        layers=layers,
        source_config=found[0] if found else None,
    )


@contextmanager
def open_file(path: Path, where: str) -> Iterator[Model]:
    header = read_header(path, where)
    with ExitStack() as stack:
        opened = _opened(stack, header)
        stored = [Stored(e.name, e, e.name, _loader(opened, header, e), header)
                  for e in header.entries.values()]  # fmt: skip
        yield _model(path, where, FORMAT, stored)


@contextmanager
def open_index(index: Path, where: str) -> Iterator[Model]:
    """A sharded export: the index's weight map, each tensor from its shard's header."""
    names = sharded.shard_names(index, where)  # plain names inside the folder, bounded
    weight_map = _weight_map(index, where)
    with ExitStack() as stack:
        headers: dict[str, tuple[Header, Any]] = {}
        held = 0
        for name in names:
            header = read_header(index.parent / name, f"{where}: shard {name}")
            held += len(header.entries)
            if held > MAX_TENSORS:
                raise ModelReadError("too-many-objects", f"{where}: its shards hold over "
                                     f"{MAX_TENSORS:,} tensors")  # fmt: skip
            headers[name] = (header, _opened(stack, header))
        stored = []
        for tensor, shard in weight_map.items():
            header, opened = headers[shard]
            entry = header.entries.get(tensor)
            if entry is None:
                raise ModelReadError("missing-object", f"{where}: the index puts "
                                     f"{_shown(tensor)} in {shard}, which lacks it")  # fmt: skip
            load = _loader(opened, header, entry)
            stored.append(Stored(tensor, entry, f"{shard}:{tensor}", load, header))
        yield _model(index, where, SHARDED_FORMAT, stored)


def _weight_map(index: Path, where: str) -> dict[str, str]:
    weight_map = read_json_file(index, "safetensors index", where).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelReadError("bad-json", f"{where}: safetensors index has no weight_map of "
                             "tensor -> shard file")  # fmt: skip
    if len(weight_map) > MAX_TENSORS:
        raise ModelReadError("too-many-objects", f"{where}: the index lists "
                             f"{len(weight_map):,} tensors (limit {MAX_TENSORS:,})")  # fmt: skip
    return weight_map
