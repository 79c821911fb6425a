"""Crafted safetensors files that the safetensors library never writes: a header edited after
the fact, lengths and offsets that lie. Used by tests/readers/test_hf_safetensors.py and the
fuzz family (tests/fuzz/safetensors_cases.py). Real exports come from
tests/fixtures/make_safetensors_fixtures.py."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

from tests.conftest import MODELS

EXPORTS = MODELS / "safetensors"


def split(data: bytes) -> tuple[dict, bytes]:
    """(header object, the data after it) of a safetensors file's bytes."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join(header: dict | bytes, body: bytes, length: int | None = None) -> bytes:
    """A safetensors file: `header` (an object, or raw bytes) and `body`; `length`: the
    header length to claim instead of the true one."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def edited(edit: Callable[[dict], None], source: str = "gpt2/model.safetensors") -> bytes:
    """A real export's bytes with its header changed by `edit` (its data kept)."""
    header, body = split((EXPORTS / source).read_bytes())
    edit(header)
    return join(header, body)


def first_tensor(header: dict) -> str:
    """The name of the tensor whose bytes come first."""
    return min((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][0])  # fmt: skip


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
