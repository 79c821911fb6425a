"""Incremental, idempotent ingest over real Keras files: nothing re-read, duplicated or lost."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from wpipe import schema
from wpipe.dblock import Protected
from wpipe.walk import discover

from tests.conftest import MODELS

COUNTS = (
    "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM weights), "
    "(SELECT count(*) FROM histograms), (SELECT count(*) FROM weight_values)"
)


@pytest.fixture
def folder(tmp_path):
    target = tmp_path / "zoo"
    target.mkdir()
    for name in ("k2_dense_bn_frozen.h5", "k3_lstm.h5", "k2_conv2d.h5"):
        shutil.copy2(MODELS / name, target / name)
    return target


def test_second_run_reads_nothing_and_changes_nothing(folder, warehouse):
    first = warehouse.ingest(folder)
    assert (first.ingested, first.unchanged, first.failed) == (3, 0, [])
    before = warehouse.query(COUNTS)
    snapshot = warehouse.query("SELECT model_id, ingested_at FROM models ORDER BY 1")
    second = warehouse.ingest(folder)
    assert (second.ingested, second.unchanged, second.bytes_read) == (0, 3, 0)
    assert warehouse.query(COUNTS) == before
    assert warehouse.query("SELECT model_id, ingested_at FROM models ORDER BY 1") == snapshot


def test_a_changed_file_replaces_only_its_own_rows(folder, warehouse):
    warehouse.ingest(folder)
    before = warehouse.query(COUNTS)
    shutil.copy2(MODELS / "k2_uncompiled.h5", folder / "k2_conv2d.h5")  # new content, same path
    os.utime(folder / "k2_conv2d.h5", (2e9, 2e9))
    report = warehouse.ingest(folder)
    assert (report.ingested, report.unchanged) == (1, 2)
    rows = warehouse.query("SELECT count(*), count(DISTINCT model_id) FROM models")
    assert rows == [(3, 3)]
    assert warehouse.query(COUNTS) != before
    dupes = warehouse.query(
        "SELECT model_id, layer_path, weight_name, count(*) FROM weights GROUP BY ALL "
        "HAVING count(*) > 1"
    )
    assert dupes == []


def test_touched_but_identical_file_is_hashed_not_reread(folder, warehouse):
    warehouse.ingest(folder)
    os.utime(folder / "k3_lstm.h5", (2e9, 2e9))
    report = warehouse.ingest(folder)
    assert (report.ingested, report.unchanged) == (0, 3)
    assert warehouse.query("SELECT mtime FROM models WHERE path LIKE '%k3_lstm.h5'") == [(2e9,)]


def test_prune_drops_deleted_files_from_database_and_lake(folder, warehouse):
    warehouse.ingest(folder)
    gone = warehouse.query("SELECT model_id FROM models WHERE path LIKE '%k3_lstm.h5'")[0][0]
    (folder / "k3_lstm.h5").unlink()
    assert warehouse.ingest(folder).pruned == 0  # without --prune nothing is dropped
    assert warehouse.query("SELECT count(*) FROM models") == [(3,)]
    assert warehouse.ingest(folder, prune=True).pruned == 1
    assert warehouse.query("SELECT count(*) FROM models") == [(2,)]
    assert warehouse.query("SELECT count(*) FROM weights WHERE model_id = ?", [gone]) == [(0,)]
    assert not (warehouse.lake / gone).exists()


def test_process_pool_gives_the_same_rows_as_one_process(folder, tmp_path, warehouse):
    from tests.conftest import Warehouse

    warehouse.ingest(folder, jobs=1)
    pooled = Warehouse(tmp_path / "pooled")
    (tmp_path / "pooled").mkdir()
    pooled.ingest(folder, jobs=2)
    sql = "SELECT model_id, layer_path, weight_name, mean, std, p50 FROM weights ORDER BY ALL"
    assert warehouse.query(sql) == pooled.query(sql)


def test_lake_partitions_hold_the_same_rows_as_the_database(folder, warehouse):
    warehouse.ingest(folder)
    for table in schema.MODEL_TABLES:
        lake_rows = sum(
            pq.read_metadata(p).num_rows for p in warehouse.lake.glob(f"*/{table.name}.parquet")
        )
        assert warehouse.query(f"SELECT count(*) FROM {table.name}") == [(lake_rows,)]
        columns = pq.read_schema(next(warehouse.lake.glob(f"*/{table.name}.parquet"))).names
        assert columns == table.column_names


@pytest.mark.parametrize(("mode", "per_tensor"), [("none", 0), ("sample:5", 5)])
def test_values_modes_bound_weight_values(folder, warehouse, mode, per_tensor):
    warehouse.ingest(folder, values=mode)
    rows = warehouse.query(
        "SELECT w.size, count(v.value) FROM weights w LEFT JOIN weight_values v "
        "USING (model_id, layer_path, weight_name) GROUP BY w.size, w.model_id, w.layer_path, "
        "w.weight_name"
    )
    assert rows and all(n == min(size, per_tensor) for size, n in rows)


def test_all_values_reproduce_the_tensor(folder, warehouse):
    warehouse.ingest(folder)
    rows = warehouse.query(
        "SELECT w.size, count(*), min(v.flat_index), max(v.flat_index), "
        "abs(sum(v.value) - w.mean * w.size) < 1e-3 * greatest(1, w.l1) "
        "FROM weights w JOIN weight_values v USING (model_id, layer_path, weight_name) "
        "GROUP BY w.model_id, w.layer_path, w.weight_name, w.size, w.mean, w.l1"
    )
    assert rows and all(
        (n, lo, hi, ok) == (size, 0, size - 1, True) for size, n, lo, hi, ok in rows
    )


def test_discover_sniffs_content_and_skips_the_lake(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / "checkpoint")  # no extension
    shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / "old.keras")  # TF<=2.11 .keras is HDF5
    lake = tmp_path / "x.lake"
    lake.mkdir()
    (lake / "m.h5").write_bytes(b"")
    found, skipped = discover([tmp_path], Protected([lake]))
    assert sorted(p.name for p in found) == ["checkpoint", "old.keras"] and not skipped


def test_names_are_widened_only_where_stems_clash(tmp_path, warehouse):
    for run in ("run_a", "run_b"):
        (tmp_path / run).mkdir()
        shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / run / "e01.h5")
    shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / "solo.h5")
    warehouse.ingest(tmp_path)
    names = sorted(n for (n,) in warehouse.query("SELECT name FROM models"))
    assert names == ["run_a/e01", "run_b/e01", "solo"]


def test_a_killed_ingest_leaves_no_partial_model_and_a_rerun_completes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    zoo = tmp_path / "zoo"
    for run in ("a", "b", "c", "d"):
        shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "models" /
                        "cnn_lr1e-2", zoo / run)  # fmt: skip
    db = tmp_path / "k.duckdb"
    command = [sys.executable, "-m", "wpipe.cli", "ingest", str(zoo), "--db", str(db), "-j", "1",
               "-q"]  # fmt: skip
    proc = subprocess.Popen(command)
    time.sleep(1.5)  # interpreter start-up, then part of the run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from tests.conftest import Warehouse

    w = Warehouse(tmp_path)
    w.db_path = db
    w.lake = db.with_suffix(".lake")
    partial = w.query(
        "SELECT m.model_id FROM models m LEFT JOIN weights w USING (model_id) "
        "GROUP BY m.model_id, m.n_tensors HAVING count(w.model_id) <> m.n_tensors"
    )
    assert partial == []
    report = w.ingest(zoo)
    assert not report.failed
    assert w.query("SELECT count(*), count(DISTINCT path) FROM models") == [(20, 20)]
    dupes = w.query(
        "SELECT count(*) FROM (SELECT model_id, layer_path, weight_name FROM weights "
        "GROUP BY ALL HAVING count(*) > 1)"
    )
    assert dupes == [(0,)]
    assert not list((w.lake / ".tmp").glob("*"))


def test_changing_an_option_recomputes_unchanged_files(folder, warehouse):
    warehouse.ingest(folder, values="none")
    assert warehouse.query("SELECT count(*) FROM weight_values") == [(0,)]
    again = warehouse.ingest(folder, values="none")
    assert (again.ingested, again.unchanged) == (0, 3)
    changed = warehouse.ingest(folder, values="sample:3")
    assert (changed.ingested, changed.unchanged) == (3, 0)
    wrong = warehouse.query(
        "SELECT w.layer_path FROM weights w LEFT JOIN weight_values v "
        "USING (model_id, layer_path, weight_name) GROUP BY w.model_id, w.layer_path, "
        "w.weight_name, w.size HAVING count(v.value) <> least(w.size, 3)"
    )
    assert wrong == []
    options = warehouse.query("SELECT DISTINCT ingest_options FROM models")
    assert len(options) == 1 and "values=sample:3" in options[0][0]
