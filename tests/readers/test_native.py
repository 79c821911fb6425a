"""Native Keras layouts (.keras zip, .weights.h5, sharded index, unzipped folder) against the
same model saved as legacy .h5 by the same Keras 3 run, and against Keras's own arrays."""

from __future__ import annotations

import io
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import MODELS, Warehouse, expected

NATIVE = ["k3_dense_bn_frozen", "k3_lstm", "k3_bidi_td", "k3_conv2d", "k3_mha"]
# the same kinds written by Keras 3 on the JAX backend, and by tf_keras (the Keras 2 API)
NATIVE += ["k3j_dense_bn_frozen", "k3j_lstm", "k3j_conv2d", "k3j_mha", "k3j_gru_reset_after"]
NATIVE += ["k2_dense_bn_frozen", "k2_lstm", "k2_conv2d", "k2_mha"]
LAYER_COLUMNS = (
    "layer_index, layer_path, layer_name, class_name, trainable, n_params, n_trainable, "
    "n_tensors, activation, units, filters, kernel_size, config"
)
STAT_COLUMNS = (
    "layer_path, weight_name, role, dtype, shape, size, mean, std, min, max, abs_mean, l1, "
    "l2, max_abs, zero_count, near_zero_frac, nan_count, inf_count, p01, p05, p25, p50, p75, "
    "p95, p99, skew, kurtosis"
)
WEIGHT_COLUMNS = f"weight_index, trainable, {STAT_COLUMNS}"


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    w = Warehouse(tmp_path_factory.mktemp("native"))
    paths = [MODELS / f"{n}{ext}" for n in NATIVE for ext in (".h5", ".keras", ".weights.h5")]
    paths += [MODELS / f"k3_{n}_unzipped" for n in ("lstm", "conv2d")]
    paths += [MODELS / f"k3_{n}_sharded.weights.json" for n in ("lstm", "conv2d")]
    report = w.ingest(*paths)
    assert not report.failed, [o.message for o in report.failed]
    return w


def rows(w: Warehouse, file: str, table: str, columns: str) -> list[tuple]:
    return w.query(
        f"SELECT {columns} FROM {table} WHERE model_id = "
        "(SELECT model_id FROM models WHERE path LIKE ?) ORDER BY ALL",
        [f"%/{file}"],
    )


@pytest.mark.parametrize("name", NATIVE)
def test_keras_archive_gives_the_rows_of_the_h5_save(loaded, name):
    for table, columns in (("layers", LAYER_COLUMNS), ("weights", WEIGHT_COLUMNS)):
        legacy = rows(loaded, f"{name}.h5", table, columns)
        assert legacy and rows(loaded, f"{name}.keras", table, columns) == legacy, table


@pytest.mark.parametrize("name", NATIVE)
def test_bare_weights_file_recovers_layer_names_roles_and_values(loaded, name):
    # Without config.json the file cannot tell frozen layers or layer order, so those differ.
    columns = STAT_COLUMNS
    if name.startswith("k2_"):
        # tf_keras writes no `name` attribute on vars groups (Keras 3.6+ does): layer paths are
        # then Keras's group names (`dense_1`), so compare everything but the path
        columns = STAT_COLUMNS.replace("layer_path, ", "")
    legacy = rows(loaded, f"{name}.h5", "weights", columns)
    assert rows(loaded, f"{name}.weights.h5", "weights", columns) == legacy
    moving = rows(loaded, f"{name}.weights.h5", "weights", "trainable, role")
    assert all(not t for t, role in moving if role.startswith("moving_"))


@pytest.mark.parametrize("name", ["lstm", "conv2d"])
def test_unzipped_folder_and_sharded_index_are_one_model_each(loaded, name):
    for table, columns in (("layers", LAYER_COLUMNS), ("weights", WEIGHT_COLUMNS)):
        assert rows(loaded, f"k3_{name}_unzipped", table, columns) == rows(
            loaded, f"k3_{name}.keras", table, columns
        )
    assert rows(loaded, f"k3_{name}_sharded.weights.json", "weights", STAT_COLUMNS) == rows(
        loaded, f"k3_{name}.weights.h5", "weights", STAT_COLUMNS
    )
    shards = loaded.query("SELECT count(*) FROM models WHERE path LIKE '%sharded_0%'")
    assert shards == [(0,)]


def test_formats_versions_and_counts(loaded):
    got = {
        path.rsplit("/", 1)[1]: (fmt, version, n_params, opt)
        for path, fmt, version, n_params, opt in loaded.query(
            "SELECT path, format, keras_version, n_params, n_optimizer_tensors FROM models"
        )
    }
    spec, _ = expected("k3_lstm.keras")
    assert got["k3_lstm.keras"][:3] == ("keras-zip", spec["keras_version"], spec["count_params"])
    assert got["k3_lstm_unzipped"][:3] == ("keras-dir", spec["keras_version"], spec["count_params"])
    assert got["k3_lstm.weights.h5"][:3] == ("weights-h5", None, spec["count_params"])
    assert got["k3_lstm_sharded.weights.json"][:3] == (
        "weights-sharded",
        None,
        spec["count_params"],
    )
    # the optimizer's variables were split over five shards; all are counted once
    assert got["k3_lstm_sharded.weights.json"][3] == got["k3_lstm.weights.h5"][3] > 0


@pytest.mark.parametrize("name", NATIVE)
def test_archive_tensors_match_the_arrays_keras_returned(loaded, name):
    spec, arrays = expected(f"{name}.keras")
    got = {
        (r[0], r[1]): r[2:]
        for r in rows(loaded, f"{name}.keras", "weights",
                      "layer_path, weight_name, trainable, shape, mean, std, p50, l2")
    }  # fmt: skip
    assert len(got) == len(spec["weights"])
    for w in spec["weights"]:
        trainable, shape, *stats = got[(w["layer_path"], w["weight_name"])]
        a = arrays[w["key"]].astype(np.float64)
        assert (trainable, shape) == (w["trainable"], w["shape"])
        assert stats == pytest.approx([a.mean(), a.std(), np.median(a), np.linalg.norm(a)])
    n = loaded.query(
        "SELECT n_params, n_trainable, n_non_trainable FROM models WHERE path LIKE ?",
        [f"%/{name}.keras"],
    )
    assert n == [(spec["count_params"], spec["n_trainable"], spec["n_non_trainable"])]


def rebuild_archive(source, target, transform_weights=None, compression=zipfile.ZIP_STORED):
    """Copy a .keras archive member by member, optionally rewriting its weights file."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.weights.h5" and transform_weights:
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as f:
                    transform_weights(f)
                data = buffer.getvalue()
            dst.writestr(info.filename, data)
    return target


def compare_to_original(tmp_path, original, rebuilt):
    w = Warehouse(tmp_path)
    assert not w.ingest(MODELS / original, rebuilt).failed
    for table, columns in (("layers", LAYER_COLUMNS), ("weights", WEIGHT_COLUMNS)):
        assert rows(w, rebuilt.name, table, columns) == rows(w, original, table, columns)


def test_deflated_archive_reads_the_same(tmp_path):
    rebuilt = rebuild_archive(MODELS / "k3_mha.keras", tmp_path / "deflated.keras",
                              compression=zipfile.ZIP_DEFLATED)  # fmt: skip
    compare_to_original(tmp_path, "k3_mha.keras", rebuilt)


def test_keras_2_13_layer_checkpoint_dependencies_layout(tmp_path):
    # Keras 2.12-2.14 saved layers under _layer_checkpoint_dependencies/ (keras_formats §4.4);
    # this Python cannot run those versions, so the layout is reproduced by renaming the group.
    def rename(f):
        f.move("layers", "_layer_checkpoint_dependencies")

    rebuilt = rebuild_archive(MODELS / "k3_conv2d.keras", tmp_path / "k213.keras", rename)
    compare_to_original(tmp_path, "k3_conv2d.keras", rebuilt)


def test_keras_before_3_6_without_name_attributes(tmp_path):
    # Before Keras 3.6 vars groups carried no `name`; layers map by snake_case order instead.
    def strip_names(f):
        def visit(_key, obj):
            if "name" in obj.attrs:
                del obj.attrs["name"]

        f.visititems(visit)

    for name in ("k3_mha.keras", "k3_dense_bn_frozen.keras"):
        (tmp_path / name).mkdir()
        rebuilt = rebuild_archive(MODELS / name, tmp_path / f"nonames_{name}", strip_names)
        compare_to_original(tmp_path / name, name, rebuilt)


def test_renamed_save_folder_is_found_by_content(tmp_path):
    shutil.copytree(MODELS / "k3_lstm_unzipped", tmp_path / "zoo" / "whatever")
    w = Warehouse(tmp_path)
    report = w.ingest(tmp_path / "zoo")
    assert (report.ingested, report.failed) == (1, [])
    assert w.query("SELECT format, name FROM models") == [("keras-dir", "whatever")]
