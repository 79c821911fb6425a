"""Weights identity: content hashes equal for equal weights whatever the file (issue #27)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from wpipe.analyse.identity import tensor_sha

from tests.conftest import MODELS, Warehouse, expected

SAVES = ("k3_conv2d.h5", "k3_conv2d.keras", "k3_conv2d.weights.h5")


def _resave(source: Path, target: Path, byteorder: str) -> None:
    """The same weights in other bytes: every dataset rewritten gzip-compressed and chunked,
    floats in the given byte order; attributes and groups as they were."""

    def copy(src: h5py.Group, dst: h5py.Group) -> None:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name, item in src.items():
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(name))
                continue
            data = item[()]
            if data.dtype.kind == "f":
                data = data.astype(data.dtype.newbyteorder(byteorder))
            chunked = {"compression": "gzip", "chunks": True} if data.ndim else {}
            out = dst.create_dataset(name, data=data, **chunked)
            for key, value in item.attrs.items():
                out.attrs[key] = value

    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        copy(src, dst)


@pytest.fixture(scope="module")
def saves(tmp_path_factory):
    """The three Keras saves of one model, a big-endian re-save, and a fine-tune of its head."""
    root = tmp_path_factory.mktemp("identity")
    models = root / "models"
    models.mkdir()
    for name in SAVES:
        shutil.copy2(MODELS / name, models / name)
    _resave(MODELS / "k3_conv2d.h5", models / "resaved.h5", ">")
    tuned = models / "tuned.h5"
    shutil.copy2(MODELS / "k3_conv2d.h5", tuned)
    with h5py.File(tuned, "r+") as f:  # the head moved, the backbone frozen
        kernel = f["model_weights/out/cnn/out/kernel"]
        kernel[...] = kernel[()] + 0.01
    w = Warehouse(root)
    assert not w.ingest(models).failed
    return w


def _shas(w: Warehouse, name: str) -> dict[tuple[str, str], str]:
    rows = w.query(
        "SELECT layer_path, weight_name, content_sha FROM weights JOIN models USING (model_id) "
        "WHERE name = ?",
        [name],
    )
    return {(p, n): s for p, n, s in rows}


def test_content_sha_is_the_hash_of_the_arrays_keras_held(saves):
    spec, arrays = expected("k3_conv2d.h5")
    shas = _shas(saves, "k3_conv2d.h5")
    assert len(shas) == len(spec["weights"])
    for weight in spec["weights"]:
        array = arrays[weight["key"]]
        head = f"{array.dtype.newbyteorder('<').str}|{list(array.shape)}|".encode()
        truth = hashlib.sha256(head + array.astype(array.dtype.newbyteorder("<")).tobytes())
        assert shas[weight["layer_path"], weight["weight_name"]] == truth.hexdigest()


def test_every_save_and_a_resave_share_every_tensor_and_the_model_hash(saves):
    names = ["k3_conv2d.h5", "k3_conv2d.keras", "k3_conv2d.weights.h5", "resaved"]
    per_save = [_shas(saves, n) for n in names]
    assert all(s == per_save[0] for s in per_save[1:])
    rows = saves.query(
        "SELECT name, sha256, weights_sha FROM models WHERE name IN (?, ?, ?, ?)", names
    )
    assert len({r[1] for r in rows}) == 4  # four different files...
    assert len({r[2] for r in rows}) == 1  # ...one set of weights
    listed = saves.query("SELECT model, same_weights_as, same_file FROM identical_models")
    (first,) = {same_as for _, same_as, _ in listed}  # the first ingested stands for them
    assert sorted([first, *(m for m, _, _ in listed)]) == sorted(names)
    assert not any(same for _, _, same in listed)
    assert not saves.query("SELECT * FROM duplicate_models")  # same weights, not same bytes


def test_a_fine_tune_shares_its_frozen_tensors_with_its_base(saves):
    base, tuned = _shas(saves, "k3_conv2d.h5"), _shas(saves, "tuned")
    assert tuned[("out", "kernel")] != base[("out", "kernel")]
    assert {k for k in base if base[k] == tuned[k]} == set(base) - {("out", "kernel")}
    shared = saves.query(
        "SELECT DISTINCT layer_path, weight_name FROM shared_tensors WHERE model = 'tuned'"
    )
    # the constant tensors (a fresh BN's zero moving mean...) are equal by construction
    constant = {
        (p, n)
        for p, n in saves.query(
            "SELECT layer_path, weight_name FROM weights JOIN models USING (model_id) "
            "WHERE name = 'tuned' AND min = max"
        )
    }
    assert set(shared) == set(base) - {("out", "kernel")} - constant
    weights = saves.query(
        "SELECT DISTINCT weights_sha FROM models WHERE name IN ('tuned', 'resaved')"
    )
    assert len(weights) == 2


def test_the_hash_ignores_byte_order_and_memory_layout_but_not_shape_or_dtype():
    a = np.arange(12, dtype="<f4").reshape(3, 4)
    assert tensor_sha(a) == tensor_sha(a.astype(">f4")) == tensor_sha(np.asfortranarray(a))
    assert tensor_sha(a) != tensor_sha(a.reshape(4, 3))
    assert tensor_sha(a) != tensor_sha(a.astype("<f8"))
