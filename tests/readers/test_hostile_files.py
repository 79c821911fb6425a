"""Hostile and odd files are bounded before anything is spent: declared sizes against limits
and against their storage, name lists and counts, JSON size and depth; non-real dtypes and
never-written datasets are kept with a per-tensor status, never silently cast. One ingest of
them all beside two good files: each fails alone, with its code, or is stored with a status."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from tests.conftest import Warehouse, dense_config, write_legacy_h5
from tests.fuzz.cases import with_kernel

KERNEL = np.ones((2, 3), "f4")


def kernel_file(path, make_dataset):
    with_kernel(path.parent, make_dataset, path.name)


def complex_kernel(g, name):
    g[name] = (KERNEL + 1j * KERNEL).astype("c8")


def string_kernel(g, name):
    g[name] = np.array([b"a", b"b"])


def enum_kernel(g, name):
    g.create_dataset(name, data=np.zeros(3, "u1"), dtype=h5py.enum_dtype({"A": 0, "B": 1}, "u1"))


def compound_kernel(g, name):
    g[name] = np.zeros(3, dtype=[("re", "f4"), ("im", "f4")])


def unwritten_kernel(g, name):
    g.create_dataset(name, shape=(1000, 1000), dtype="f4")


def oversized_kernel(g, name):
    g.create_dataset(name, shape=(100_000, 100_000), dtype="f4")  # 40 GB declared, 0 stored


def gzip_bomb_kernel(g, name):
    # 1 GiB declared, one 4 MB chunk of zeros written: a few kB on disk
    ds = g.create_dataset(name, shape=(16384, 16384), dtype="f4", chunks=(1024, 1024),
                          compression="gzip", fillvalue=0.0)  # fmt: skip
    ds[:1024, :1024] = 0.0


def duplicate_layers(path):
    write_legacy_h5(path, {"d": {"d/kernel:0": KERNEL}}, dense_config("d", "d"))
    with h5py.File(path, "a") as f:
        f["model_weights"].attrs["layer_names"] = [b"d", b"d"]


def many_layer_names(path):
    with h5py.File(path, "w", libver="latest") as f:  # latest: attributes past 64 kB
        f.attrs["model_config"] = json.dumps(dense_config("d"))
        f.create_group("model_weights").attrs["layer_names"] = [
            f"l{i}".encode() for i in range(200_000)
        ]


def deep_config(path):
    write_legacy_h5(path, {"d": {"d/kernel:0": KERNEL}}, "[" * 100_000 + "]" * 100_000)


def keras0_billion(path):
    with h5py.File(path, "w") as f:
        f.attrs["nb_layers"] = 10**9


def index(weight_map):
    return lambda path: path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def deep_index(path):
    path.write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")


FAILING = {
    "oversized.h5": (lambda p: kernel_file(p, oversized_kernel), "oversized-tensor",
                     "declares 40,000,000,000 bytes"),
    "gzbomb.h5": (lambda p: kernel_file(p, gzip_bomb_kernel), "compression-bomb", "stored"),
    "dup.h5": (duplicate_layers, "duplicate-name", "'d' more than once"),
    "names.h5": (many_layer_names, "too-many-objects", "lists 200,000 names"),
    "deep.h5": (deep_config, "bad-json", "nests 100,000 levels"),
    "k0.h5": (keras0_billion, "too-many-objects", "nb_layers = 1,000,000,000"),
    "int.weights.json": (index({"vars": 5}), "bad-json", "maps a weight to int"),
    "null.weights.json": (index({"vars": None}), "bad-json", "maps a weight to NoneType"),
    "self.weights.json": (index({"vars": "self.weights.json"}), "bad-json", "lists itself"),
    "deep.weights.json": (deep_index, "bad-json", "nests 100,001 levels"),
}  # fmt: skip
KEPT = {
    "complex.h5": (complex_kernel, "not-real: complex64"),
    "strings.h5": (string_kernel, "not-numeric: string"),
    "enum.h5": (enum_kernel, "not-real: enum"),
    "compound.h5": (compound_kernel, "not-real: compound"),
    "unwritten.h5": (unwritten_kernel, "unallocated: never written"),
}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "models"
    folder.mkdir()
    for name, (make, *_) in FAILING.items():
        make(folder / name)
    for name, (make, _) in KEPT.items():
        kernel_file(folder / name, make)
    for name in ("good_a.h5", "good_b.h5"):
        write_legacy_h5(folder / name, {"d": {"d/kernel:0": KERNEL}}, dense_config("d"))
    warehouse = Warehouse(root)
    return folder, warehouse, warehouse.ingest(folder, jobs=2)


@pytest.mark.parametrize("name", FAILING)
def test_a_hostile_file_fails_alone_with_its_code(ingested, name):
    folder, warehouse, report = ingested
    _, code, words = FAILING[name]
    [outcome] = [o for o in report.failed if o.path == str(folder / name)]
    assert outcome.error == code
    assert str(folder / name) in outcome.message and words in outcome.message
    assert "\n" not in outcome.message
    rows = warehouse.query("SELECT error FROM ingest_errors WHERE path = ?", [str(folder / name)])
    assert rows == [(code,)]


def test_only_the_hostile_files_failed(ingested):
    folder, _, report = ingested
    assert sorted(o.path for o in report.failed) == sorted(str(folder / n) for n in FAILING)
    assert report.ingested == len(KEPT) + 2


@pytest.mark.parametrize("name", KEPT)
def test_a_non_real_or_unwritten_tensor_is_kept_with_its_status(ingested, name):
    folder, warehouse, _ = ingested
    [(status, mean, size)] = warehouse.query(
        "SELECT w.status, w.mean, w.size FROM weights w JOIN models m USING (model_id) "
        "WHERE m.path = ?",
        [str(folder / name)],
    )
    assert status.startswith(KEPT[name][1]) and mean is None and size > 0


def test_good_tensors_have_status_ok_and_their_statistics(ingested):
    _, warehouse, _ = ingested
    rows = warehouse.query(
        "SELECT w.status, w.mean FROM weights w JOIN models m USING (model_id) "
        "WHERE m.path LIKE '%good_%'"
    )
    assert rows == [("ok", 1.0), ("ok", 1.0)]
