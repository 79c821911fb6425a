"""Bad input: one clear line naming the file and the reason, a row in ingest_errors, the run
goes on, and nothing already ingested is lost or duplicated."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from tests.conftest import dense_config, write_legacy_h5

GOOD = {"d": {"d/kernel:0": np.ones((2, 3), "f4"), "d/bias:0": np.zeros(3, "f4")}}


def make_good(path):
    return write_legacy_h5(path, GOOD, dense_config("d"))


def make_empty(path):
    path.write_bytes(b"")


def make_random(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def make_truncated(path):
    big = {"d": {"d/kernel:0": np.random.default_rng(1).random((200, 300)).astype("f4")}}
    write_legacy_h5(path, big, dense_config("d"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_plain_hdf5(path):
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(10)


def make_bad_json(path):
    write_legacy_h5(path, GOOD, b"{not json")


def make_zip(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{}")


def make_external_link(path):
    target = path.parent.parent / "secret.h5"  # outside the ingested folder
    with h5py.File(target, "w") as f:
        f["kernel:0"] = np.ones((2, 3), "f4")
    write_legacy_h5(path, {"d": {}}, dense_config("d"))
    with h5py.File(path, "a") as f:
        group = f["model_weights/d"]
        group.attrs["weight_names"] = [b"d/kernel:0"]
        group.create_group("d")
        group["d"]["kernel:0"] = h5py.ExternalLink(str(target), "kernel:0")


def make_virtual_dataset(path):
    source = path.parent.parent / "outside.h5"
    with h5py.File(source, "w") as f:
        f["x"] = np.ones(6, "f4")
    write_legacy_h5(path, {"d": {}}, dense_config("d"))
    layout = h5py.VirtualLayout(shape=(6,), dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "x", shape=(6,))
    with h5py.File(path, "a") as f:
        group = f["model_weights/d"]
        group.attrs["weight_names"] = [b"d/bias:0"]
        group.create_group("d").create_virtual_dataset("bias:0", layout)


def make_missing_dataset(path):
    write_legacy_h5(path, GOOD, dense_config("d"))
    with h5py.File(path, "a") as f:
        f["model_weights/d"].attrs["weight_names"] = [b"d/kernel:0", b"d/gone:0"]


CASES = {
    "empty.h5": (make_empty, "empty-file", "empty"),
    "random.h5": (make_random, "not-hdf5", "not a Keras model file"),
    "truncated.h5": (make_truncated, "truncated", "truncated"),
    "plain.h5": (make_plain_hdf5, "not-keras", "without a Keras layout"),
    "badjson.h5": (make_bad_json, "bad-json", "model_config is not valid JSON"),
    "linked.h5": (make_external_link, "external-link", "external link"),
    "virtual.h5": (make_virtual_dataset, "virtual-dataset", "virtual dataset"),
    "missing.h5": (make_missing_dataset, "missing-object", "not in the file"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_file_is_recorded_and_the_run_goes_on(tmp_path, warehouse, name):
    folder = tmp_path / "models"
    folder.mkdir()
    make, code, words = CASES[name]
    make(folder / name)
    make_good(folder / "good.h5")
    report = warehouse.ingest(folder)
    assert report.ingested == 1
    assert [o.error for o in report.failed] == [code]
    message = report.failed[0].message
    assert "\n" not in message and str(folder / name) in message and words in message
    rows = warehouse.query("SELECT path, error, message FROM ingest_errors")
    assert rows == [(str(folder / name), code, message)]
    assert warehouse.query("SELECT count(*) FROM models") == [(1,)]


def test_unchanged_failure_is_not_retried_and_a_fixed_file_clears_its_error(tmp_path, warehouse):
    bad = tmp_path / "m.h5"
    make_random(bad)
    assert len(warehouse.ingest(tmp_path).failed) == 1
    again = warehouse.ingest(tmp_path)
    assert [o.error for o in again.failed] == ["unchanged-failure"]
    assert warehouse.query("SELECT count(*) FROM ingest_errors") == [(1,)]
    make_good(bad)
    os.utime(bad, (1e9, 1e9))
    fixed = warehouse.ingest(tmp_path)
    assert fixed.ingested == 1 and not fixed.failed
    assert warehouse.query("SELECT count(*) FROM ingest_errors") == [(0,)]


def test_a_file_that_breaks_later_keeps_no_stale_or_partial_rows(tmp_path, warehouse):
    path = make_good(tmp_path / "m.h5")
    warehouse.ingest(tmp_path)
    make_truncated(path)
    report = warehouse.ingest(tmp_path)
    assert [o.error for o in report.failed] == ["truncated"]
    # the previous good version stays until the file is readable again; nothing is duplicated
    assert warehouse.query("SELECT count(*) FROM models") == [(1,)]
    assert warehouse.query("SELECT count(*) FROM weights") == [(2,)]
    assert not list((warehouse.lake / ".tmp").iterdir())
