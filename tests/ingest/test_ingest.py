"""Incremental, idempotent ingest over real Keras files: nothing re-read, duplicated or lost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wpipe import store
from wpipe.analyse import tables
from wpipe.analyse.stats import StatsOptions
from wpipe.analyse.tables import ValuesMode
from wpipe.ingest.driver import discover, ingest

from tests.conftest import EXAMPLES, MODELS, Warehouse

COUNTS = (
    "SELECT (SELECT count(*) FROM models), (SELECT count(*) FROM weights), "
    "(SELECT count(*) FROM histograms), (SELECT count(*) FROM weight_values)"
)


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


def test_process_pool_gives_the_same_rows_as_one_process(folder, tmp_path, warehouse):

    warehouse.ingest(folder, jobs=1)
    pooled = Warehouse(tmp_path / "pooled")
    (tmp_path / "pooled").mkdir()
    pooled.ingest(folder, jobs=2)
    sql = "SELECT model_id, layer_path, weight_name, mean, std, p50 FROM weights ORDER BY ALL"
    assert warehouse.query(sql) == pooled.query(sql)


@pytest.mark.parametrize(("mode", "per_tensor"), [("none", 0), ("sample:5", 5)])
def test_values_modes_bound_weight_values(folder, warehouse, mode, per_tensor):
    warehouse.ingest(folder, values=mode)
    rows = warehouse.query(
        "SELECT w.size, count(v.value) FROM weights w LEFT JOIN weight_values v "
        "USING (model_id, layer_path, weight_name) GROUP BY w.size, w.model_id, w.layer_path, "
        "w.weight_name"
    )
    assert rows and all(n == min(size, per_tensor) for size, n in rows)


def test_auto_values_bound_each_model_and_share_it_evenly(folder, warehouse, monkeypatch):
    # small limits so these small models cross them: 8 a tensor, 20 a model
    monkeypatch.setattr(tables, "AUTO_TENSOR_VALUES", 8)
    monkeypatch.setattr(tables, "MODEL_VALUES", 20)
    warehouse.ingest(folder, values="auto")
    rows = warehouse.query(
        "SELECT w.model_id, w.size, count(v.value) FROM weights w LEFT JOIN weight_values v "
        "USING (model_id, layer_path, weight_name) WHERE w.status = 'ok' "
        "GROUP BY w.model_id, w.layer_path, w.weight_name, w.size"
    )
    by_model: dict[str, list[tuple[int, int]]] = {}
    for model_id, size, n in rows:
        by_model.setdefault(model_id, []).append((size, n))
    crossed = 0
    for counts in by_model.values():
        sizes = [size for size, _ in counts]
        # the largest share that keeps the model within 20 (at least one value a tensor)
        share = max([1] + [q for q in range(1, 9) if sum(min(s, q) for s in sizes) <= 20])
        crossed += share < 8
        assert [n for _, n in counts] == [min(size, share) for size in sizes]
    assert crossed  # some model was over the limit


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
    found = sorted(p.name for p in discover([tmp_path], skip=[lake]))
    assert found == ["checkpoint", "old.keras"]


def test_names_are_widened_only_where_stems_clash(tmp_path, warehouse):
    for run in ("run_a", "run_b"):
        (tmp_path / run).mkdir()
        shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / run / "e01.h5")
    shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / "solo.h5")
    warehouse.ingest(tmp_path)
    names = sorted(n for (n,) in warehouse.query("SELECT name FROM models"))
    assert names == ["run_a/e01", "run_b/e01", "solo"]


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


def test_peak_memory_stays_within_three_largest_tensors_plus_300_mb(tmp_path):
    """One 134 MB kernel: a default ingest (in its own process) peaks below 3x + 300 MB."""
    import subprocess
    import sys

    import numpy as np

    from tests.conftest import dense_config, write_legacy_h5

    kernel = np.random.default_rng(0).standard_normal((8192, 4096), dtype=np.float32)
    path = write_legacy_h5(
        tmp_path / "big.h5",
        {"d": {"d/kernel:0": kernel, "d/bias:0": np.zeros(4096, np.float32)}},
        dense_config("d"),
    )
    budget_mb = 3 * kernel.nbytes / 2**20 + 300
    del kernel
    # the run's own process (-j 1 reads in it) reports its high-water mark
    script = (
        "import sys\nfrom wpipe.cli import app\ntry:\n    app(sys.argv[1:])\n"
        "except SystemExit as e:\n    assert not e.code\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    command = [sys.executable, "-c", script, "ingest", str(path), "--db",
               str(tmp_path / "m.duckdb"), "-j", "1", "-q"]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    peak_mb = int(out.split()[-1]) / 1024
    assert peak_mb < budget_mb, f"peak {peak_mb:.0f} MB, budget {budget_mb:.0f} MB"


def test_progress_reports_every_phase_with_counts(tmp_path):
    from wpipe import store
    from wpipe.ingest.driver import ingest

    zoo = tmp_path / "zoo"
    shutil.copytree(EXAMPLES / "cnn_lr1e-2", zoo / "run")
    shutil.copy2(zoo / "run" / "e01.h5", zoo / "copy.h5")  # same size: hashed first
    seen: dict[str, list] = {}

    class Recorder:
        def phase(self, name, total):
            seen.setdefault(name, [total, 0])
            self.name = name

        def advance(self, n=1, item=""):
            seen[self.name][1] += n

    db = store.Database(tmp_path / "p.duckdb")
    try:
        ingest([zoo], db, tmp_path / "p.lake", jobs=1, progress=Recorder())
    finally:
        db.close()
    assert seen["hash"] == [6, 6]
    assert seen["read"][0] == 5 and seen["read"][1] == 5
    assert seen["load"][1] >= 5 and seen["copy"] == [1, 1]
    assert {"scan", "drift"} <= set(seen)


def test_a_database_inside_the_ingested_folder_keeps_its_writer_lock(tmp_path):
    """`cd runs && wpipe ingest .` puts the database in the walk. Sniffing it would close a
    descriptor of the file, which drops DuckDB's POSIX lock (locks belong to the process) and
    let a second writer in: two writers corrupted the database. The walk never opens it."""
    for name in ("k2_conv2d.h5", "k3_lstm.h5"):
        shutil.copy(MODELS / name, tmp_path / name)
    db_path = tmp_path / "w.duckdb"
    db = store.Database(db_path)
    try:
        report = ingest(
            [tmp_path], db, tmp_path / "w.lake", StatsOptions(), ValuesMode.parse("none"), 1, False
        )
        assert report.files == 2 and not report.failed
        second_writer = subprocess.run(
            [sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1])", str(db_path)],
            capture_output=True,
            text=True,
        )
        assert second_writer.returncode != 0 and "lock" in second_writer.stderr.lower()
    finally:
        db.close()


def _drift_rows(w: Warehouse) -> list[tuple]:
    return w.query(
        "SELECT a.path, b.path, d.* EXCLUDE (model_a, model_b), d.sha256_a = a.sha256 "
        "FROM drift d JOIN models a ON a.model_id = d.model_a "
        "JOIN models b ON b.model_id = d.model_b ORDER BY ALL"
    )


def test_drift_is_stored_batch_by_batch_as_in_one_batch(tmp_path, monkeypatch):
    """Drift rows are stored at each batch once their previous checkpoint's hash is known,
    held until then: epoch_9 is a copy of a file read before it (so it is not read, and its
    rows come at the end), and epoch_10's drift against it waits for them. The end of the
    run's series pass (which reads any pair missing or stale) has only epoch_9's own pair to
    read, which no worker read."""
    from wpipe import compare
    from wpipe.ingest import plan

    models = tmp_path / "models"
    (models / "run").mkdir(parents=True)
    (models / "aaa").mkdir()
    for epoch, source in zip((8, 9, 10, 11), ("e01", "e02", "e03", "e04"), strict=True):
        shutil.copy(EXAMPLES / "cnn_lr1e-3" / f"{source}.h5", models / "run" / f"epoch_{epoch}.h5")
    shutil.copy(EXAMPLES / "cnn_lr1e-3" / "e02.h5", models / "aaa" / "first.h5")
    (tmp_path / "whole").mkdir()
    (tmp_path / "batched").mkdir()
    whole = Warehouse(tmp_path / "whole")
    assert whole.ingest(models).drift_pairs == 3

    series_pairs = []

    def series_drift(*args):
        found = real_series_drift(*args)
        series_pairs.append(found[0])
        return found

    real_series_drift = compare.series_drift
    monkeypatch.setattr(compare, "series_drift", series_drift)
    monkeypatch.setattr(plan, "CHUNK_FILES", 1)
    monkeypatch.setattr(sys.modules["wpipe.ingest.batches"], "BATCH_MODELS", 1)
    batched = Warehouse(tmp_path / "batched")
    report = batched.ingest(models)
    assert (report.ingested, report.copied, report.drift_pairs) == (5, 1, 3)
    assert series_pairs == [1]
    rows = _drift_rows(batched)
    assert {(Path(a).name, Path(b).name) for a, b, *_ in rows} == {
        ("epoch_8.h5", "epoch_9.h5"), ("epoch_9.h5", "epoch_10.h5"), ("epoch_10.h5", "epoch_11.h5")
    }  # fmt: skip
    assert all(row[-1] for row in rows)  # sha256_a: the previous checkpoint's own
    assert rows == _drift_rows(whole)


def test_drift_a_no_drift_run_left_out_is_completed_by_the_next_run(tmp_path, warehouse):
    """Series A ingested with drift, then series B with --no-drift: the next run changes no
    file, yet completes B's four consecutive pairs (the database's drift mark)."""
    runs = tmp_path / "runs"
    for name in ("cnn_lr1e-3", "cnn_lr1e-2"):
        shutil.copytree(EXAMPLES / name, runs / name)
    warehouse.ingest(runs / "cnn_lr1e-3", file_timeout=None)
    warehouse.ingest(runs, drift=False, file_timeout=None)
    pairs = "SELECT count(DISTINCT (model_a, model_b)) FROM drift"
    assert warehouse.query(pairs) == [(4,)]
    report = warehouse.ingest(runs, file_timeout=None)
    assert report.ingested == 0 and report.unchanged == 10
    assert warehouse.query(pairs) == [(8,)]  # 5 checkpoints a series: 4 pairs each
    again = warehouse.ingest(runs, file_timeout=None)
    assert again.drift_pairs == 0  # the mark is cleared once drift is complete
