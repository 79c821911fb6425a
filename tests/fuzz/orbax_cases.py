"""Fuzz family for Orbax checkpoints (Keras 3's OrbaxCheckpoint step folders): real steps damaged
at random (seeded), and crafted hostile ones Orbax never writes. Skipped without tensorstore
(the `orbax` extra: a step is then one `missing-extra` row, tests/readers/test_orbax.py)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tests.conftest import MODELS
from tests.fuzz.cases import Case
from tests.fuzz.tf_cases import _damage

ORBAX = MODELS / "orbax"
STEPS = ("mlp/ckpt/2", "cnn_bn/ckpt/4", "lstm/ckpt/6")
# The step's files worth damaging: the tree's metadata, Keras's config, the OCDBT manifest and
# data files (the B+tree, the zarr metadata and the arrays' shards).
MEMBERS = ("pytree/_METADATA", "model_config/_strings.json", "pytree/manifest.ocdbt", "data")


def copy_step(step: str, folder: Path) -> Path:
    target = folder / "ckpt" / step.rsplit("/", 1)[-1]
    shutil.copytree(ORBAX / step, target)
    return target


def damaged_step(step: str, seed: int, member: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        target = copy_step(step, folder)
        path = next((target / "pytree" / "d").iterdir()) if member == "data" else target / member
        rng = np.random.default_rng(seed)
        path.write_bytes(bytes(_damage(bytearray(path.read_bytes()), rng, seed % 4)))

    return make


def with_metadata(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """The mlp's step with its tree metadata edited."""

    def make(folder: Path) -> None:
        path = copy_step(STEPS[0], folder) / "pytree" / "_METADATA"
        meta = json.loads(path.read_text())
        edit(meta)
        path.write_text(json.dumps(meta))

    return make


def replaced(member: str, value: bytes | str) -> Callable[[Path], None]:
    """The mlp's step with one file replaced (str: a symlink to it)."""

    def make(folder: Path) -> None:
        target = copy_step(STEPS[0], folder)
        path = next((target / "pytree" / "d").iterdir()) if member == "data" else target / member
        path.unlink()
        if isinstance(value, str):
            os.symlink(value, path)
        else:
            path.write_bytes(value)

    return make


def with_shape(shape: list[int]) -> Callable[[Path], None]:
    """The mlp's step whose first kernel's zarr.json (inside the OCDBT store) declares `shape`."""

    def make(folder: Path) -> None:
        import tensorstore as ts

        target = copy_step(STEPS[0], folder)
        store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{target / 'pytree'}/"})
        store = store.result()
        key = "trainable_variables.mlp.hidden.kernel/zarr.json"
        meta = json.loads(store.read(key).result().value)
        meta["shape"] = shape
        store.write(key, json.dumps(meta).encode()).result()

    return make


def many_entries(meta: dict) -> None:
    meta["tree_metadata"] = {
        str(i): {"key_metadata": [{"key": "trainable_variables"}, {"key": f"x{i}"}],
                 "value_metadata": {"value_type": "jax.Array"}}
        for i in range(200_001)
    }  # fmt: skip


def orbax_cases(n: int) -> Iterator[Case]:
    fam = "orbax"
    try:
        import tensorstore  # noqa: F401
    except ImportError:
        return
    for seed in range(n):
        step = STEPS[seed % len(STEPS)]
        member = MEMBERS[seed % len(MEMBERS)]
        yield Case(fam, f"{step} {member} damaged #{seed}", damaged_step(step, seed, member))
    yield Case(fam, "metadata JSON 100,000 deep", replaced("pytree/_METADATA",
               b"[" * 100_000 + b"]" * 100_000), "error", "bad-json")  # fmt: skip
    yield Case(fam, "tree metadata a nested list", with_metadata(
        lambda m: m.update(tree_metadata=json.loads("[" * 150 + "]" * 150))), "error",
        "bad-json")  # fmt: skip
    yield Case(fam, "metadata keys that are no names", with_metadata(
        lambda m: m.update(tree_metadata={"x": {"key_metadata": [{"key": [1]}]}})), "error",
        "bad-json")  # fmt: skip
    yield Case(fam, "metadata of 200,001 arrays", with_metadata(many_entries), "error",
               "too-many-objects")  # fmt: skip
    yield Case(fam, "array declaring 4 TB", with_shape([1 << 20, 1 << 20]), "error",
               "oversized-tensor")  # fmt: skip
    yield Case(fam, "1 GiB declared in 20 KB", with_shape([1 << 14, 1 << 14]), "error",
               "compression-bomb")  # fmt: skip
    yield Case(fam, "data file -> /dev/zero", replaced("data", "/dev/zero"), "error",
               "unsafe-archive")  # fmt: skip
    yield Case(fam, "data file -> /etc/passwd", replaced("data", "/etc/passwd"), "error",
               "unsafe-archive")  # fmt: skip
    yield Case(fam, "config text 100,000 deep", replaced("model_config/_strings.json",
               json.dumps({"config": "[" * 100_000 + "]" * 100_000}).encode()), "error",
               "bad-json")  # fmt: skip
