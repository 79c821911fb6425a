"""Fuzz families for TensorFlow saves: tensor bundles (`.index` + `.data-*`) and SavedModel
folders (`saved_model.pb`, `keras_metadata.pb`, `variables/`). Real tf_keras saves damaged at
random (seeded), and crafted hostile ones real TensorFlow never writes (tests/readers/
tf_write.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tests.conftest import MODELS
from tests.fuzz.cases import Case
from tests.readers import tf_write

TF = MODELS / "tf"
BUNDLES = ("k2_cnn_bn", "k2_bigru", "k2_nested")
SAVED = ("k2_lstm", "k2_nested")


def _damage(data: bytearray, rng: np.random.Generator, kind: int) -> bytearray:
    if kind == 0:  # flip bytes
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 20))):
            data[i] ^= int(rng.integers(1, 256))
    elif kind == 1:  # zero a range
        start = int(rng.integers(0, max(1, len(data) - 8)))
        end = min(len(data), start + int(rng.integers(4, 256)))
        data[start:end] = bytes(end - start)
    elif kind == 2:  # truncate
        del data[int(rng.integers(0, len(data))) :]
    else:  # random bytes anywhere
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 100))):
            data[i] = int(rng.integers(0, 256))
    return data


def copy_bundle(stem: str, folder: Path) -> Path:
    for path in (TF / "bundles").glob(f"{stem}.*"):
        if not path.name.endswith(".h5"):
            shutil.copy2(path, folder / path.name)
    return folder / f"{stem}.index"


def damaged_bundle(stem: str, seed: int, member: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        index = copy_bundle(stem, folder)
        target = index if member == "index" else folder / f"{stem}.data-00000-of-00001"
        rng = np.random.default_rng(seed)
        target.write_bytes(bytes(_damage(bytearray(target.read_bytes()), rng, seed % 4)))

    return make


def flipped_tensor_byte(folder: Path) -> None:
    copy_bundle("k2_mlp", folder)
    shard = folder / "k2_mlp.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0x01  # inside the first tensor
    shard.write_bytes(bytes(data))


def crafted(nodes=None, edit=None, shards: int = 1) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        if nodes is None and edit is None:
            tf_write.write_bundle(folder / "m", {}, None, num_shards=shards)
        elif nodes is None:
            tf_write.dense_bundle(folder / "m", edit)
        else:
            tf_write.write_bundle(folder / "m", {"k": np.ones((2, 2), "f4")}, nodes())

    return make


def deep_graph() -> list[bytes]:
    chain = [tf_write.node([("layer-0", i + 1)]) for i in range(50_000)]
    return [*chain, tf_write.node(attributes=[("d/kernel", "k")])]


def cyclic_graph() -> list[bytes]:
    return [tf_write.node([("layer-0", 1)]), tf_write.node([("k", 2), ("up", 0)]),
            tf_write.node([("loop", 1)], attributes=[("d/kernel", "k")])]  # fmt: skip


def wide_graph() -> list[bytes]:
    return [tf_write.node([("x", 0)] * 500_001)]


def lie(field: int, value):
    def edit(key, fields):
        if key.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE"):
            fields[field] = value

    return edit


def sparse(name: str, size: int, beside: Callable[[Path], None] | None = None):
    def make(folder: Path) -> None:
        if beside:
            beside(folder)
        with open(folder / name, "wb") as fh:
            fh.truncate(size)

    return make


def bundle_cases(n: int) -> Iterator[Case]:
    fam = "tf-bundles"
    for seed in range(n):
        stem = BUNDLES[seed % len(BUNDLES)]
        yield Case(fam, f"{stem}.index damaged #{seed}", damaged_bundle(stem, seed, "index"))
        yield Case(fam, f"{stem} data damaged #{seed}", damaged_bundle(stem, seed, "data"))
    yield Case(fam, "one flipped byte in a tensor", flipped_tensor_byte, "error",
               "checksum-mismatch")  # fmt: skip
    yield Case(fam, "object graph 50,000 models deep", crafted(deep_graph), "error", "corrupt")
    yield Case(fam, "cyclic object graph", crafted(cyclic_graph), "ok")
    yield Case(fam, "object graph of 500,001 references", crafted(wide_graph), "error",
               "too-many-objects", slow=True)  # fmt: skip
    yield Case(fam, "entry past its shard's end", crafted(edit=lie(2, 10**12)), "error",
               "truncated")  # fmt: skip
    yield Case(fam, "entry of a terabyte", crafted(edit=lie(3, 1 << 40)), "error",
               "oversized-tensor")  # fmt: skip
    yield Case(fam, "header claims a million shards", crafted(shards=1_000_000), "error",
               "corrupt")  # fmt: skip
    yield Case(fam, "300 MB sparse index", sparse("m.index", 300 << 20, lambda d: (
        d / "m.data-00000-of-00001").write_bytes(b"")), "error", "oversized-index")  # fmt: skip
    yield Case(fam, "data shard -> /dev/zero", shard_to_dev_zero, "error", "not-a-regular-file")


def shard_to_dev_zero(folder: Path) -> None:
    copy_bundle("k2_mlp", folder)
    shard = folder / "k2_mlp.data-00000-of-00001"
    shard.unlink()
    os.symlink("/dev/zero", shard)


def copy_saved(stem: str, folder: Path) -> Path:
    target = folder / stem
    shutil.copytree(TF / "savedmodel" / stem, target)
    return target


def damaged_saved(stem: str, seed: int, member: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        target = copy_saved(stem, folder)
        if member == "saved_model.pb":
            (target / "keras_metadata.pb").unlink()  # read the TF 2.0-2.4 way
        path = target / member
        rng = np.random.default_rng(seed)
        path.write_bytes(bytes(_damage(bytearray(path.read_bytes()), rng, seed % 4)))

    return make


def replaced(stem: str, member: str, value: bytes | str | None) -> Callable[[Path], None]:
    """A real SavedModel with one member replaced (str: a symlink; None: removed)."""

    def make(folder: Path) -> None:
        path = copy_saved(stem, folder) / member
        path.unlink()
        if isinstance(value, str):
            os.symlink(value, path)
        elif value is not None:
            path.write_bytes(value)

    return make


def metadata_node(text: bytes) -> bytes:
    node = tf_write.field(2, 0) + tf_write.field(3, b"root") + tf_write.field(5, text)
    return tf_write.field(1, node)


def saved_model_cases(n: int) -> Iterator[Case]:
    fam = "tf-savedmodel"
    for seed in range(n):
        stem = SAVED[seed % len(SAVED)]
        for member in ("keras_metadata.pb", "saved_model.pb"):
            yield Case(fam, f"{stem} {member} damaged #{seed}", damaged_saved(stem, seed, member))
    yield Case(fam, "metadata JSON 100,000 deep", replaced("k2_lstm", "keras_metadata.pb",
               metadata_node(b"[" * 100_000 + b"]" * 100_000)), "error", "bad-json")  # fmt: skip
    yield Case(fam, "metadata field claims 2**60 bytes", replaced("k2_lstm", "keras_metadata.pb",
               tf_write.varint(1 << 3 | 2) + tf_write.varint(1 << 60)), "error",
               "corrupt")  # fmt: skip
    yield Case(fam, "variables.index -> /dev/zero", replaced(
        "k2_lstm", "variables/variables.index", "/dev/zero"), "error",
        "not-a-regular-file")  # fmt: skip
    yield Case(fam, "no variables", replaced("k2_mlp", "variables/variables.index", None),
               "error", "missing-member")  # fmt: skip
    yield Case(fam, "metadata of 70 MB (sparse)", lambda d: (copy_saved("k2_mlp", d), sparse(
        "k2_mlp/keras_metadata.pb", 70 << 20)(d)), "error", "oversized-metadata")  # fmt: skip
