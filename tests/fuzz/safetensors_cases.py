"""Fuzz family for Hugging Face safetensors exports: KerasHub's real exports damaged at random
(seeded), and crafted headers and indexes the safetensors library never writes
(tests/readers/safetensors_write.py)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tests.fuzz.cases import Case
from tests.fuzz.tf_cases import _damage, sparse
from tests.readers import safetensors_write as sw

SINGLE = "gpt2/model.safetensors"
SHARDED = "llama_sharded"
INDEX = "model.safetensors.index.json"
SHARD = "model-00002-of-00004.safetensors"


def copy_sharded(folder: Path) -> Path:
    for path in (sw.EXPORTS / SHARDED).iterdir():
        shutil.copy2(path, folder / path.name)
    return folder / INDEX


def damaged(member: str, seed: int) -> Callable[[Path], None]:
    """A real export with one file damaged: the single file, a shard or the index; even
    seeds damage only the header (length and JSON), odd ones anywhere."""

    def make(folder: Path) -> None:
        if member == "single":
            target = folder / "model.safetensors"
            shutil.copy2(sw.EXPORTS / SINGLE, target)
        else:
            copy_sharded(folder)
            target = folder / (INDEX if member == "index" else SHARD)
        data = bytearray(target.read_bytes())
        rng = np.random.default_rng(seed)
        if seed % 2 == 0 and member != "index":
            end = min(len(data), 8 + int.from_bytes(data[:8], "little"))
            head = _damage(data[:end], rng, (seed // 2) % 4)
            data = head + data[end:] if len(head) == end else head
        else:
            data = _damage(data, rng, seed % 4)
        target.write_bytes(bytes(data))

    return make


def file_of(make_bytes: Callable[[], bytes], name: str = "model.safetensors"):
    def make(folder: Path) -> None:
        sw.write(folder / name, make_bytes())

    return make


def edit_first(field: str, value):
    def edit(header: dict) -> None:
        header[sw.first_tensor(header)][field] = value

    return edit


def overlapping(header: dict) -> None:
    first = sw.first_tensor(header)
    for name, spec in header.items():
        if name not in (first, "__metadata__") and spec["shape"] == header[first]["shape"]:
            spec["data_offsets"] = list(header[first]["data_offsets"])
            return


def index_of(weight_map: dict) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        copy_sharded(folder)
        (folder / INDEX).write_text(json.dumps({"weight_map": weight_map}))

    return make


def shard_link(target: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        copy_sharded(folder)
        (folder / SHARD).unlink()
        os.symlink(target, folder / SHARD)

    return make


def many_tensors() -> bytes:
    return sw.join({f"t{i}": 0 for i in range(200_001)}, b"")


def safetensors_cases(n: int) -> Iterator[Case]:
    fam = "safetensors"
    for seed in range(n):
        for member in ("single", "shard", "index"):
            yield Case(fam, f"{member} damaged #{seed}", damaged(member, seed))
    yield Case(fam, "a real export", file_of(lambda: (sw.EXPORTS / SINGLE).read_bytes()), "ok",
               models=1)  # fmt: skip
    yield Case(fam, "a real sharded export", copy_sharded, "ok", models=1)
    yield Case(fam, "header length 2**63", file_of(lambda: sw.join(b"{}", b"", 1 << 63)),
               "error", "oversized-metadata")  # fmt: skip
    yield Case(fam, "40 MB header in a 48 MB sparse file", lambda d: (
        sparse("model.safetensors", 48 << 20)(d),
        _set_length(d / "model.safetensors", 40 << 20)), "error",
        "oversized-metadata")  # fmt: skip
    yield Case(fam, "header longer than the file", file_of(lambda: sw.join(b"{}", b"", 1 << 20)),
               "error", "truncated")  # fmt: skip
    yield Case(fam, "header 100,000 deep", file_of(lambda: sw.join(
        b"[" * 100_000 + b"]" * 100_000, b"")), "error", "bad-json")  # fmt: skip
    yield Case(fam, "200,001 tensors", file_of(many_tensors), "error", "too-many-objects")
    yield Case(fam, "a tensor of a terabyte", file_of(lambda: sw.join(
        {"w": {"dtype": "U8", "shape": [1 << 40], "data_offsets": [0, 1 << 40]}}, b"")),
        "error", "oversized-tensor")  # fmt: skip
    yield Case(fam, "offsets past the end", file_of(lambda: sw.edited(
        edit_first("data_offsets", [0, 1 << 50]))), "error", "corrupt")  # fmt: skip
    yield Case(fam, "two tensors on the same bytes", file_of(lambda: sw.edited(overlapping)),
               "error", "corrupt")  # fmt: skip
    yield Case(fam, "shape not its bytes", file_of(lambda: sw.edited(
        edit_first("shape", [1 << 30, 1 << 30]))), "error", "corrupt")  # fmt: skip
    yield Case(fam, "cut inside the last tensor", file_of(lambda: (sw.EXPORTS / SINGLE)
               .read_bytes()[:-9]), "error", "truncated")  # fmt: skip
    yield Case(fam, "no tensors", file_of(lambda: sw.join({}, b"")), "error", "not-keras")
    yield Case(fam, "model.safetensors -> /dev/zero", lambda d: os.symlink(
        "/dev/zero", d / "model.safetensors"), "error", "not-a-regular-file")  # fmt: skip
    yield Case(fam, "shard -> /dev/zero", shard_link("/dev/zero"), "error", "not-a-regular-file")
    yield Case(fam, "shard name ../", index_of({"lm_head.weight": f"../{SHARD}"}), "error",
               "unsafe-archive")  # fmt: skip
    yield Case(fam, "shard name /etc/passwd", index_of({"lm_head.weight": "/etc/passwd"}),
               "error", "unsafe-archive")  # fmt: skip
    yield Case(fam, "index names a tensor its shard lacks", index_of({"x.weight": SHARD}),
               "error", "missing-object")  # fmt: skip


def _set_length(path: Path, length: int) -> None:
    with open(path, "r+b") as fh:
        fh.write(length.to_bytes(8, "little"))
