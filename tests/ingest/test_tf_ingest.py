"""TF checkpoints and SavedModels through the real pipeline: walk, names, series drift, errors."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
from wpipe.readers.walk import walk

from tests.conftest import EXPECTED, MODELS

TF = MODELS / "tf"
NAMES = ("bigru", "cnn_bn", "lstm", "lstm_legacy_adam", "mlp", "nested", "subclassed")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """The ModelCheckpoint run saved both ways (TF bundles and .h5), ingested once."""
    from tests.conftest import Warehouse

    root = tmp_path_factory.mktemp("tf_series")
    for name in ("series_bundle", "series_h5"):
        shutil.copytree(TF / name, root / "runs" / name)
    w = Warehouse(root)
    report = w.ingest(root / "runs")
    assert not report.failed and report.ingested == 6
    return w, root / "runs"


def test_a_checkpoint_folder_is_walked_and_every_model_in_it_found():
    found, skipped = walk([TF / "bundles"])
    names = sorted(p.name for p in found)
    assert names == sorted(
        [f"k2_{n}.index" for n in NAMES] + [f"k2_{n}.weights_only.h5" for n in NAMES]
    )
    assert not skipped


def test_a_savedmodel_folder_is_one_model():
    found, _ = walk([TF / "savedmodel"])
    assert sorted(p.name for p in found) == sorted([*(f"k2_{n}" for n in NAMES), "k2_mlp_tf24"])


def test_a_bundle_series_is_named_by_its_steps(series):
    w, _ = series
    names = w.query("SELECT name, format FROM models ORDER BY name")
    assert names == [
        *[(f"series_bundle/e0{i}", "tf-checkpoint") for i in (1, 2, 3)],
        *[(f"series_h5/e0{i}", "h5-weights") for i in (1, 2, 3)],
    ]


def drift_by(w, folder: str) -> dict:
    rows = w.query(
        "SELECT a.name, b.name, d.layer_path, d.weight_name, d.rel_l2, d.cosine, d.max_abs_change "
        "FROM drift d JOIN models a ON a.model_id = d.model_a JOIN models b ON "
        "b.model_id = d.model_b WHERE a.name LIKE ? ORDER BY ALL",
        [f"{folder}/%"],
    )
    return {(a.split("/")[-1], b.split("/")[-1], p, n): v for a, b, p, n, *v in rows}


def test_drift_across_the_bundle_series_equals_drift_across_the_h5_series(series):
    w, _ = series
    bundle, h5 = drift_by(w, "series_bundle"), drift_by(w, "series_h5")
    assert len(bundle) == 2 * 8  # two pairs, eight tensors (conv 2, bn 4, out 2)
    assert bundle.keys() == h5.keys()
    for key, values in bundle.items():
        assert values == pytest.approx(h5[key], rel=1e-12, abs=1e-12)


def test_bundle_drift_is_the_change_keras_held_between_epochs(series):
    w, _ = series
    epochs = json.loads((EXPECTED / "tf" / "series.json").read_text())
    with np.load(EXPECTED / "tf" / "series.npz") as npz:
        arrays = dict(npz)
    drift = drift_by(w, "series_bundle")
    for before, after in itertools.pairwise(epochs):
        for wa, wb in zip(before["weights"], after["weights"], strict=True):
            layer, weight = wa["name"].split(":")[0].split("/", 1)
            a = arrays[wa["key"]].astype("f8")
            b = arrays[wb["key"]].astype("f8")
            key = (f"e0{before['epoch']}", f"e0{after['epoch']}", layer, weight)
            want = np.linalg.norm(b - a) / np.linalg.norm(a)
            assert drift[key][0] == pytest.approx(want, rel=1e-6)


def test_a_flipped_byte_gives_one_error_row_and_the_run_goes_on(tmp_path, warehouse):
    folder = tmp_path / "m"
    shutil.copytree(TF / "series_bundle", folder)
    shard = folder / "e02.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x20
    shard.write_bytes(bytes(data))
    report = warehouse.ingest(folder)
    assert report.ingested == 2
    rows = warehouse.query("SELECT path, error, message FROM ingest_errors")
    assert [(p, e) for p, e, _ in rows] == [(str(folder / "e02.index"), "checksum-mismatch")]
    assert "CRC32C" in rows[0][2] and "\n" not in rows[0][2]


def test_savedmodel_and_its_h5_twin_share_an_architecture(tmp_path, warehouse):
    for name in ("lstm", "nested"):
        shutil.copytree(TF / "savedmodel" / f"k2_{name}", tmp_path / "m" / f"k2_{name}")
        shutil.copy2(TF / "h5" / f"k2_{name}.h5", tmp_path / "m" / f"k2_{name}.h5")
    assert not warehouse.ingest(tmp_path / "m").failed
    rows = warehouse.query(
        "SELECT format, arch_id, n_params, n_trainable, n_layers FROM models ORDER BY name, format"
    )
    saved = {r[1:] for r in rows if r[0] == "tf-savedmodel"}
    h5 = {r[1:] for r in rows if r[0] == "h5-model"}
    assert saved == h5 and len(saved) == 2
