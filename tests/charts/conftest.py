"""Shared by the chart tests: the fixture zoo, the demo sweep and a 500-model database,
all ingested through the real pipeline, and helpers reading specs and the Keras arrays.

Expected numbers come from the arrays Keras saved (tests/fixtures/expected/*.npz) or from
the model files read with h5py, computed with numpy.
"""

from __future__ import annotations

import csv
import importlib
import shutil
import struct
from collections import defaultdict
from pathlib import Path

import altair as alt
import h5py
import numpy as np
import pytest
import wpipe
from wpipe import store
from wpipe.core import schema
from wpipe.store.lake import Lake, write_data_file

from tests.conftest import MODELS, Warehouse, expected

ZOO = [
    "k2_conv2d.h5",
    "k3_conv2d.h5",
    "k2_lstm.h5",
    "k3_lstm.h5",
    "k2_gru_reset_after.h5",
    "k2_bidi_td.h5",
    "k2_dense_bn_frozen.h5",
    "k2_mha.h5",
]


# Charts of checkpoint series, metrics and health findings draw on the demo zoo's sweep (three
# learning rates × five epochs, with Keras's history.csv), a checkpoint saved twice (e06 holds
# e05's weights: every tensor stale) and the two models made sick on purpose.
DEMO = Path(__file__).resolve().parents[2] / "examples" / "models"
RUNS = ["cnn_lr1e-2", "cnn_lr1e-3", "cnn_lr3e-1"]
SWEEP_CHARTS = ["drift", "distance", "metric", "health"]
# Layer-output charts need `wpipe activations` rows: tests/charts/test_activations.py.
ACTIVATION_CHARTS = ["act-histogram", "dead-units", "unit-activity"]
# Lineage charts need `wpipe lineage set` rows: tests/charts/test_lineage.py.
LINEAGE_CHARTS = ["agreement", "update-sizes", "update-spectrum"]


def make_zoo(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(MODELS / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def db_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("charts")
    warehouse = Warehouse(root)
    report = warehouse.ingest(make_zoo(root / "zoo", ZOO))
    assert report.ingested == len(ZOO) and not report.failed
    return warehouse.db_path


@pytest.fixture(scope="session")
def con(db_path):
    connection = wpipe.connect(db_path)
    yield connection
    connection.close()


def tensor(fixture: str, layer_path: str, weight_name: str) -> np.ndarray:
    """The array Keras saved for a tensor of a fixture, as float64."""
    spec, arrays = expected(fixture)
    for w in spec["weights"]:
        if w["layer_path"] == layer_path and w["weight_name"] == weight_name:
            return arrays[w["key"]].astype(np.float64)
    raise KeyError((fixture, layer_path, weight_name))


def data_rows(spec: dict) -> list[dict]:
    """Every inline data row of a Vega-Lite spec (top-level, nested and named datasets)."""
    rows: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            data = node.get("data")
            if isinstance(data, dict) and isinstance(data.get("values"), list):
                rows.extend(data["values"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    for values in spec.get("datasets", {}).values():
        rows.extend(values)
    return rows


def vega_lite_schema() -> dict:
    major = alt.SCHEMA_VERSION.split(".")[0]
    return importlib.import_module(f"altair.vegalite.{major}.schema.core").load_schema()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="session")
def sweep_zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    zoo = make_zoo(root / "zoo", ["k2_health_cnn.h5", "k2_health_lstm.h5"])
    for run in RUNS:
        shutil.copytree(DEMO / run, zoo / run)
    shutil.copy2(zoo / "cnn_lr1e-2" / "e05.h5", zoo / "cnn_lr1e-2" / "e06.h5")
    with h5py.File(zoo / "cnn_lr1e-2" / "e06.h5", "r+") as f:  # saved again, not a byte copy
        f.attrs["saved_again"] = "epoch 6"
    result = Warehouse(root).ingest(zoo)
    assert result.ingested == 18 and not result.failed
    return zoo


@pytest.fixture(scope="session")
def sweep(sweep_zoo):
    connection = wpipe.connect(sweep_zoo.parent / "w.duckdb")
    yield connection
    connection.close()


def h5_layers(path: Path) -> dict[str, list[np.ndarray]]:
    """Every weight array of a Keras 2 .h5 file by layer, read with h5py alone, as float64."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            for name in group[layer].attrs["weight_names"]:
                name = name.decode() if isinstance(name, bytes) else name
                out[layer].append(np.asarray(group[layer][name], dtype=np.float64))
    return {k: v for k, v in out.items() if v}


def history(run: str) -> dict[str, float]:
    """val_accuracy per checkpoint name from Keras's CSVLogger file (epoch k is e0{k+1})."""
    with open(DEMO / run / "history.csv", newline="") as fh:
        return {
            f"{run}/e{int(r['epoch']) + 1:02d}": float(r["val_accuracy"])
            for r in csv.DictReader(fh)
        }


def many_models(root: Path, n_models: int = 500) -> Path:
    """A database of n_models: a few real fixtures ingested with sampled values, then their
    rows copied under new model_ids and names (a cheap stand-in for a big sweep).

    Each original and its copies form a checkpoint series (epoch k = copy k) with made-up
    drift (every 10th checkpoint unchanged, so stale) and a val_accuracy; a copy's file is
    a link to its original's, so charts that read files (distance) can."""
    originals = ["k2_conv2d.h5", "k2_lstm.h5", "k2_gru_reset_after.h5", "k2_dense_bn_frozen.h5"]
    warehouse = Warehouse(root)
    warehouse.ingest(make_zoo(root / "zoo", originals), values="sample:50")
    copies = n_models // len(originals) - 1
    db = store.Database(warehouse.db_path)
    lake = Lake.open(str(warehouse.lake))
    try:
        new_id = "left(md5(model_id || '#' || k.range::VARCHAR), 16)"
        for table in schema.MODEL_TABLES:
            columns = []
            for column in table.column_names:
                if column == "model_id":
                    columns.append(f"{new_id} AS model_id")
                elif column in ("name", "path"):
                    columns.append(f"{column} || '#' || lpad(k.range::VARCHAR, 3, '0') AS {column}")
                elif column == "sha256":  # stand-ins for distinct checkpoints, not duplicates
                    columns.append("sha256 || '#' || k.range::VARCHAR AS sha256")
                else:  # qualified: eigenvalues has a column k, the alias below
                    columns.append(f'{table.name}."{column}"')
            rows = db.con.sql(f"SELECT {', '.join(columns)} FROM {table.name}, "
                              f"range(1, {copies + 1}) AS k").to_arrow_table()  # fmt: skip
            # into the lake too: the database serves some tables from its files
            lake.commit(table.name, [write_data_file(lake.location, table.name,
                                                     rows.cast(table.arrow_schema))])  # fmt: skip
            if table.name not in db.served:
                store.insert_arrow(db.con, table, rows)
        db.record_versions(lake, lake.versions())
        _many_series(db.con, copies)
        for (path,) in db.con.execute("SELECT path FROM models WHERE path LIKE '%#%'").fetchall():
            Path(path).symlink_to(path.rsplit("#", 1)[0])
    finally:
        db.close()
    return warehouse.db_path


def _many_series(con, copies: int) -> None:
    copy = (
        "CASE WHEN {k} = 0 THEN m.model_id "
        "ELSE left(md5(m.model_id || '#' || {k}::VARCHAR), 16) END"
    )
    originals = "m.name NOT LIKE '%#%'"
    con.execute("DELETE FROM drift; DELETE FROM model_tags; DELETE FROM model_metrics")
    con.execute(
        f"INSERT INTO model_tags SELECT {copy.format(k='k.range')}, 'epoch', k.range "
        f"FROM models AS m, range(0, {copies + 1}) AS k WHERE {originals}"
    )
    con.execute(
        "INSERT INTO model_metrics SELECT t.model_id, 'val_accuracy', "
        "0.5 + 0.003 * t.value + (hash(t.model_id) % 100) / 1000, 'many.csv' "
        "FROM model_tags AS t"
    )
    con.execute(
        f"""
        INSERT INTO drift (model_a, model_b, layer_path, weight_name, size, rel_l2, cosine,
                           mean_abs_change, sign_flip_frac, max_abs_change, l2_a, l2_b,
                           l2_diff, series, sha256_a, sha256_b)
        SELECT {copy.format(k="(k.range - 1)")}, {copy.format(k="k.range")},
               w.layer_path, w.weight_name, w.size, r.rel, 1 - r.rel * r.rel / 2,
               r.rel * w.abs_mean, r.rel / 4, r.rel * w.max_abs, w.l2, w.l2, r.rel * w.l2,
               '/many/' || m.name, m.sha256, m.sha256
        FROM weights AS w JOIN models AS m USING (model_id), range(1, {copies + 1}) AS k,
        LATERAL (SELECT CASE WHEN k.range % 10 = 0 THEN 0.0
                 ELSE (1 + (hash(w.layer_path || k.range::VARCHAR) % 100) / 100) / (1 + k.range)
                 END AS rel) AS r
        WHERE {originals}
        """
    )


@pytest.fixture(scope="session")
def many_db(tmp_path_factory) -> Path:
    return many_models(tmp_path_factory.mktemp("many"))
