"""Bad input: one clear line naming the file and the reason, a row in ingest_errors, the run
goes on, and nothing already ingested is lost or duplicated."""

from __future__ import annotations

import io
import json
import os
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import MODELS, dense_config, write_legacy_h5

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


def keras_archive(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


def real_member(name: str) -> bytes:
    with zipfile.ZipFile(MODELS / "k3_dense_bn_frozen.keras") as z:
        return z.read(name)


def make_zip_bomb(path):
    # 256 MB of zeros deflate to ~250 kB: reading it must be refused, not inflated
    keras_archive(path, {"config.json": real_member("config.json"),
                         "model.weights.h5": bytes(256 << 20)}, zipfile.ZIP_DEFLATED)  # fmt: skip


def make_escaping_member(path):
    members = {n: real_member(n) for n in ("config.json", "metadata.json", "model.weights.h5")}
    keras_archive(path, {**members, "../../etc/evil.txt": b"x"})


def make_bad_config_archive(path):
    keras_archive(path, {"config.json": b"{nope", "model.weights.h5": real_member(
        "model.weights.h5")})  # fmt: skip


def make_archive_without_weights(path):
    keras_archive(path, {"config.json": real_member("config.json"), "metadata.json": b"{}"})


def make_npz_archive(path):
    keras_archive(path, {"config.json": real_member("config.json"), "model.weights.npz": b"PK"})


def make_archive_with_external_link(path):
    outside = path.parent.parent / "outside_weights.h5"
    with h5py.File(outside, "w") as f:
        f["x"] = np.ones((5, 8), "f4")
    buffer = io.BytesIO(real_member("model.weights.h5"))
    with h5py.File(buffer, "r+") as f:
        group = next(g for k, g in f["layers"].items() if "0" in g["vars"])["vars"]
        del group["0"]
        group["0"] = h5py.ExternalLink(str(outside), "x")
    keras_archive(path, {"config.json": real_member("config.json"),
                         "model.weights.h5": buffer.getvalue()})  # fmt: skip


def make_tf_checkpoint(path):
    path.write_bytes(b"\x00" * 40)  # ckpt.index: a TF tensor-bundle index, not HDF5
    path.with_name("ckpt.data-00000-of-00001").write_bytes(b"\x00" * 40)


def make_saved_model(path):
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"\x08\x01")
    (path / "variables" / "variables.index").write_bytes(b"\x00")


def make_orbax(path):
    (path / "0").mkdir(parents=True)
    (path / "_CHECKPOINT_METADATA").write_text("{}")


def make_escaping_shard_index(path):
    path.write_text(json.dumps({"metadata": {}, "weight_map": {"/vars": "../../secret.h5"}}))


CASES = {
    "empty.h5": (make_empty, "empty-file", "empty"),
    "random.h5": (make_random, "not-hdf5", "not a Keras model file"),
    "truncated.h5": (make_truncated, "truncated", "truncated"),
    "plain.h5": (make_plain_hdf5, "not-keras", "without a Keras layout"),
    "badjson.h5": (make_bad_json, "bad-json", "model_config is not valid JSON"),
    "linked.h5": (make_external_link, "external-link", "external link"),
    "virtual.h5": (make_virtual_dataset, "virtual-dataset", "virtual dataset"),
    "missing.h5": (make_missing_dataset, "missing-object", "not in the file"),
    "bomb.keras": (make_zip_bomb, "zip-bomb", "would inflate"),
    "escape.keras": (make_escaping_member, "unsafe-archive", "leaves the archive"),
    "badconfig.keras": (make_bad_config_archive, "bad-json", "config.json is not valid JSON"),
    "noweights.keras": (make_archive_without_weights, "missing-member", "without model.weights"),
    "npz.keras": (make_npz_archive, "unsupported-format", "pickled objects"),
    "linked.keras": (make_archive_with_external_link, "external-link", "external link"),
    "ckpt.index": (make_tf_checkpoint, "truncated", "shorter than a table footer"),
    "saved": (make_saved_model, "truncated", "shorter than a table footer"),
    "orbax_run": (make_orbax, "unsupported-format", "Orbax checkpoint"),
    "x.weights.json": (make_escaping_shard_index, "unsafe-archive", "outside the folder"),
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


def test_a_copy_of_a_failed_file_names_the_file_it_copies(tmp_path, warehouse):
    folder = tmp_path / "models"
    folder.mkdir()
    make_random(folder / "a.h5")
    (folder / "b.h5").write_bytes((folder / "a.h5").read_bytes())
    report = warehouse.ingest(folder)
    by_path = {o.path: o for o in report.failed}
    assert len(by_path) == 2, report.failed
    copy = next(o for o in report.failed if o.error == "copy-of-failed")
    original = next(p for p in by_path if p != copy.path)
    assert copy.message == f"{copy.path}: identical to {original} (see its error)"


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


def archive_with_config(path, edit) -> int:
    """A copy of a real .keras whose config.json `edit` changed; returns the config's bytes."""
    config = json.loads(real_member("config.json"))
    text = edit(config)
    keras_archive(path, {"config.json": text.encode(),
                         "model.weights.h5": real_member("model.weights.h5")})  # fmt: skip
    return len(text)


def ten_million_zeros(config: dict) -> str:
    """The model's layer list replaced by 10 million zeros: ~20 MB, under the 32 MB limit."""
    marker = '"LAYERS"'
    text = json.dumps({**config, "config": {**config["config"], "layers": "LAYERS"}})
    return text.replace(marker, "[" + "0," * 9_999_999 + "0]")


def long_vocabulary(config: dict) -> str:
    """A legitimate config of ~7 MB: a layer carrying a vocabulary of 600,000 words (as
    TextVectorization does)."""
    config["config"]["layers"][-1]["config"]["vocabulary"] = [f"w{i:07d}" for i in range(600_000)]
    return json.dumps(config)


def test_a_config_listing_ten_million_layers_is_refused_in_its_worker(tmp_path, warehouse):
    folder = tmp_path / "models"
    folder.mkdir()
    assert 19 << 20 < archive_with_config(folder / "zeros.keras", ten_million_zeros) < 32 << 20
    make_good(folder / "good.h5")
    report = warehouse.ingest(folder, drift=False, file_timeout=None)  # read in this process
    assert report.ingested == 1 and [o.error for o in report.failed] == ["too-many-objects"]
    assert "10,000,000 layers" in report.failed[0].message
    again = warehouse.ingest(folder, drift=False, file_timeout=None)
    assert again.unchanged == 1 and [o.error for o in again.failed] == ["unchanged-failure"]


def test_a_batch_too_large_for_the_writers_memory_is_loaded_with_more(
    tmp_path, warehouse, monkeypatch
):
    """The writer's memory lowered to 16 MB, as a 29 MB config meets the real 64 MB: the
    load runs out of it and is tried again under LOAD_RETRY_LIMIT."""
    from wpipe.store import duck

    folder = tmp_path / "models"
    folder.mkdir()
    size = archive_with_config(folder / "vocab.keras", long_vocabulary)
    monkeypatch.setattr(duck, "WRITER_MEMORY_LIMIT", "16MB")
    report = warehouse.ingest(folder, drift=False, file_timeout=None)
    assert report.ingested == 1 and not report.failed
    assert warehouse.query("SELECT length(model_config) FROM models") == [(size,)]


def test_a_batch_the_database_cannot_load_is_rolled_back_and_recorded(
    tmp_path, warehouse, monkeypatch
):
    """Where the retry fails too (both limits lowered to 16 MB), the lake is rolled back,
    both files of the batch get a `load-failed` row and the run ends normally; the next run
    (the real limits) reads them again and loads them."""
    from wpipe.store import duck
    from wpipe.store.lake import Lake

    folder = tmp_path / "models"
    folder.mkdir()
    archive_with_config(folder / "vocab.keras", long_vocabulary)
    make_good(folder / "good.h5")
    monkeypatch.setattr(duck, "WRITER_MEMORY_LIMIT", "16MB")
    monkeypatch.setattr(duck, "LOAD_RETRY_LIMIT", "16MB")
    report = warehouse.ingest(folder, drift=False, file_timeout=None)
    assert report.ingested == 0 and [o.error for o in report.failed] == ["load-failed"] * 2
    assert "OutOfMemoryException" in report.failed[0].message
    assert warehouse.query("SELECT count(*) FROM models") == [(0,)]
    assert warehouse.query("SELECT count(*), min(error) FROM ingest_errors") == [(2, "load-failed")]
    assert Lake.open(str(warehouse.lake)).dataset("models").count_rows() == 0  # rolled back
    monkeypatch.undo()
    again = warehouse.ingest(folder, drift=False, file_timeout=None)
    assert again.ingested == 2 and not again.failed
    assert warehouse.query("SELECT count(*) FROM ingest_errors") == [(0,)]
