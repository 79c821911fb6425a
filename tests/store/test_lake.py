"""The Delta lake holds exactly the database's rows through every kind of ingest, and other
engines (DuckDB without extensions, Polars, pyarrow) read it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import h5py
import polars as pl
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from wpipe import api, store, views
from wpipe.core import schema
from wpipe.ingest import filemap
from wpipe.store import sync
from wpipe.store.lake import Lake

from tests.conftest import EXAMPLES, MODELS, Warehouse

TABLES = {t.name: t for t in schema.MODEL_TABLES}


def assert_lake_equals_database(w: Warehouse) -> None:
    """Every model table: the same multiset of rows in the lake (read by deltalake, not by
    wpipe) and in DuckDB, and no model's rows twice."""
    con = duckdb.connect(str(w.db_path), read_only=True)
    try:
        for table in schema.MODEL_TABLES:
            lake = DeltaTable(str(w.lake / table.name)).to_pyarrow_dataset()
            con.register("lake_rows", lake)
            cols = ", ".join(f'"{c}"' for c in table.column_names)
            for a, b in (("lake_rows", table.name), (table.name, "lake_rows")):
                only = f"SELECT {cols} FROM {a} EXCEPT ALL SELECT {cols} FROM {b}"
                extra = con.execute(f"SELECT count(*) FROM ({only})").fetchall()[0][0]
                assert extra == 0, f"{table.name}: {extra} rows in {a} only"
            con.unregister("lake_rows")
        dupes = con.execute(
            "SELECT count(*) FROM (SELECT model_id, layer_path, weight_name FROM weights "
            "GROUP BY ALL HAVING count(*) > 1)"
        ).fetchall()[0][0]
        assert dupes == 0
    finally:
        con.close()


def test_lake_holds_the_database_rows_after_ingest_change_and_prune(folder, warehouse):
    warehouse.ingest(folder)
    assert_lake_equals_database(warehouse)
    assert warehouse.query("SELECT count(*) FROM models") == [(3,)]
    shutil.copy2(MODELS / "k2_uncompiled.h5", folder / "k2_conv2d.h5")  # new content
    os.utime(folder / "k2_conv2d.h5", (2e9, 2e9))
    assert warehouse.ingest(folder).ingested == 1
    assert_lake_equals_database(warehouse)
    (folder / "k3_lstm.h5").unlink()
    assert warehouse.ingest(folder, prune=True).pruned == 1
    assert_lake_equals_database(warehouse)
    assert warehouse.query("SELECT count(*) FROM models") == [(2,)]


def test_each_table_is_a_delta_table_with_the_contract_columns(folder, warehouse):
    warehouse.ingest(folder)
    for table in schema.MODEL_TABLES:
        dt = DeltaTable(str(warehouse.lake / table.name))
        assert [f.name for f in dt.schema().fields] == table.column_names
        for uri in dt.file_uris():
            assert pq.read_schema(uri).names == table.column_names


def test_duckdb_reads_the_lake_offline_without_extensions(folder, warehouse):
    warehouse.ingest(folder)
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.register("weights", DeltaTable(str(warehouse.lake / "weights")).to_pyarrow_dataset())
    got = con.execute("SELECT count(*), count(DISTINCT model_id) FROM weights").fetchall()[0]
    assert got == warehouse.query("SELECT count(*), count(DISTINCT model_id) FROM weights")[0]
    loaded = con.execute(
        "SELECT extension_name FROM duckdb_extensions() WHERE loaded AND NOT installed"
    ).fetchall()
    assert loaded == []


def test_polars_and_pyarrow_read_the_lake(folder, warehouse):
    warehouse.ingest(folder)
    for table in ("models", "weights", "weight_values"):
        want = warehouse.query(f"SELECT count(*) FROM {table}")[0][0]
        frame = pl.read_delta(str(warehouse.lake / table))
        assert frame.height == want
        assert frame.columns == TABLES[table].column_names
        assert DeltaTable(str(warehouse.lake / table)).to_pyarrow_table().num_rows == want
    means = pl.read_delta(str(warehouse.lake / "weights")).select(pl.col("mean").sum()).item()
    assert means == pytest.approx(warehouse.query("SELECT sum(mean) FROM weights")[0][0])


def test_a_killed_ingest_is_rolled_back_and_a_rerun_completes(tmp_path):
    zoo = tmp_path / "zoo"
    for run in ("a", "b", "c", "d"):
        shutil.copytree(EXAMPLES / "cnn_lr1e-2", zoo / run)
    db = tmp_path / "k.duckdb"
    command = [sys.executable, "-m", "wpipe.cli", "ingest", str(zoo), "--db", str(db), "-j", "1",
               "-q"]  # fmt: skip
    proc = subprocess.Popen(command)
    # kill right after the first batch reached one table: between two of the batch's commits
    first_commit = db.with_suffix(".lake") / "weights" / "_delta_log" / f"{1:020d}.json"
    deadline = time.monotonic() + 120
    while not first_commit.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    w = Warehouse(tmp_path)
    w.db_path, w.lake = db, db.with_suffix(".lake")
    w.ingest(zoo)
    assert w.query("SELECT count(*), count(DISTINCT path) FROM models") == [(20, 20)]
    assert_lake_equals_database(w)
    lake = store.Lake.open(str(w.lake))  # what the killed run wrote and never loaded: gone
    assert {t: lake.unreferenced(t) for t in TABLES} == {t: [] for t in TABLES}


def test_data_files_no_commit_references_are_swept_by_the_next_ingest(folder, warehouse):
    """A worker stopped by --file-timeout (or killed) leaves a data file that no commit names;
    the next ingest (holding the writer lock) deletes it, and nothing committed."""
    warehouse.ingest(folder)
    lake = store.Lake.open(str(warehouse.lake))
    rows = lake.dataset("weights").head(3)
    stray = warehouse.lake / "weights" / store.write_data_file(lake.location, "weights", rows).name
    # a copy the user made, named as wpipe names its files: not recorded as wpipe's, kept
    copy = warehouse.lake / "weights" / f"part-{'0' * 32}.parquet"
    shutil.copy2(stray, copy)
    assert lake.unreferenced("weights") == sorted([stray.name, copy.name])
    committed = {t: sorted(DeltaTable(str(warehouse.lake / t)).file_uris()) for t in TABLES}
    warehouse.ingest(folder)  # unchanged files: nothing is read, the stray file is swept
    assert not stray.exists() and copy.exists()
    assert {t: sorted(DeltaTable(str(warehouse.lake / t)).file_uris()) for t in TABLES} == committed
    assert_lake_equals_database(warehouse)


def test_commits_beyond_the_loaded_version_are_rolled_back(folder, warehouse, tmp_path):
    """A run killed after a lake commit but before its load: the next run restores."""
    warehouse.ingest(folder)
    db = store.Database(warehouse.db_path)
    lake = store.Lake.open(str(warehouse.lake))
    try:
        job = filemap.FileJob(str(MODELS / "k2_uncompiled.h5"), lake.location, 1, 1.0,
                              filemap.Settings(*_settings()))  # fmt: skip
        outcome = filemap.process_file(job)
        from wpipe.ingest.driver import commit_batch

        commit_batch(lake, [outcome], set())  # committed, never loaded
        assert lake.dataset("models").count_rows() == 4
        sync.reconcile(db, lake)
        assert lake.dataset("models").count_rows() == 3
    finally:
        db.close()
    assert_lake_equals_database(warehouse)


def _settings():
    from wpipe.analyse.spectra import SpectraOptions
    from wpipe.analyse.stats import StatsOptions
    from wpipe.analyse.tables import ValuesMode
    from wpipe.ingest.driver import ingest_options

    options, values, spectra = StatsOptions(), ValuesMode.default(), SpectraOptions()
    return options, values, spectra, ingest_options(options, values, spectra)


def test_identical_files_are_read_once(folder, warehouse, monkeypatch):
    shutil.copy2(folder / "k3_lstm.h5", folder / "copy_a.h5")
    (folder / "sub").mkdir()
    shutil.copy2(folder / "k3_lstm.h5", folder / "sub" / "copy_b.h5")
    opened = []
    real = filemap.open_model

    def counting(path, **where):
        opened.append(Path(path).name)
        return real(path, **where)

    monkeypatch.setattr(filemap, "open_model", counting)
    report = warehouse.ingest(folder, drift=False, file_timeout=None)  # read in this process
    assert (report.ingested, report.copied) == (5, 2)
    assert sorted(opened) == sorted(["k2_dense_bn_frozen.h5", "k2_conv2d.h5", "copy_a.h5"])
    rows = warehouse.query(
        "SELECT count(DISTINCT model_id), count(DISTINCT (layer_path, weight_name, mean, std)) "
        "FROM weights JOIN models USING (model_id) WHERE sha256 = (SELECT sha256 FROM models "
        "WHERE path LIKE '%k3_lstm.h5')"
    )
    assert rows[0][0] == 3 and rows[0][1] == warehouse.query(
        "SELECT n_tensors FROM models WHERE path LIKE '%k3_lstm.h5'")[0][0]  # fmt: skip
    assert_lake_equals_database(warehouse)


def test_a_lake_without_its_database_loads_it_without_reading_files(folder, warehouse):
    warehouse.ingest(folder)
    before = warehouse.query("SELECT model_id, name, n_params FROM models ORDER BY 1")
    warehouse.db_path.unlink()
    report = warehouse.ingest(folder)
    assert (report.ingested, report.unchanged) == (0, 3)
    assert warehouse.query("SELECT model_id, name, n_params FROM models ORDER BY 1") == before
    assert_lake_equals_database(warehouse)


def copies_every_table(warehouse: Warehouse) -> None:
    """Turn the database's served tables into copies, as for a lake on object storage."""
    db = store.Database(warehouse.db_path)
    try:
        db.serve_from(Lake.open("s3://nowhere/lake"))  # never reached: views become copies
        assert not db.served
    finally:
        db.close()


def test_a_local_lake_serves_the_tables_of_many_rows_and_copies_become_views(folder, warehouse):
    served = {"units", "weight_values", "histograms", "weight_tiles", "eigenvalues"}
    warehouse.ingest(folder)
    con = duckdb.connect(str(warehouse.db_path), read_only=True)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    con.close()
    assert served <= views and not served & tables
    assert {"models", "layers", "weights", "spectra"} <= tables
    copies_every_table(warehouse)  # a database of an older wpipe, or of a lake elsewhere
    before = warehouse.query("SELECT count(*), sum(value) FROM weight_values")
    assert warehouse.ingest(folder).ingested == 0
    assert warehouse.query("SELECT count(*), sum(value) FROM weight_values") == before
    db = store.Database(warehouse.db_path)
    try:
        assert db.served == served
    finally:
        db.close()
    assert_lake_equals_database(warehouse)


def test_served_tables_read_a_lake_whose_path_needs_quoting(folder, tmp_path):
    # a space, a quote, a percent sign and non-ASCII: deltalake's file URIs percent-encode them
    root = tmp_path / "run's 100% ünïcode dir"
    root.mkdir()
    warehouse = Warehouse(root)
    warehouse.ingest(folder)
    assert warehouse.ingest(folder).ingested == 0
    assert warehouse.query("SELECT count(*) FROM units") != [(0,)]
    assert_lake_equals_database(warehouse)


def test_a_database_moved_with_its_lake_reads_it_there(folder, warehouse, tmp_path):
    warehouse.ingest(folder)
    before = warehouse.query("SELECT count(*), sum(l2) FROM units")
    moved = Warehouse(tmp_path / "moved")
    (tmp_path / "moved").mkdir()
    shutil.move(warehouse.db_path, moved.db_path)
    shutil.move(warehouse.lake, moved.lake)
    # a reader finds the lake beside the database (the stored views name the old place)
    con = api.connect(moved.db_path)
    assert con.execute("SELECT count(*), sum(l2) FROM units").fetchall() == before
    con.close()
    report = moved.ingest(folder)
    assert (report.ingested, report.unchanged) == (0, 3)
    assert any("its lake is now read at" in w for w in report.warnings)
    assert moved.query("SELECT count(*), sum(l2) FROM units") == before
    assert_lake_equals_database(moved)


def test_a_project_folder_copied_whole_reads_its_own_lake(folder, warehouse, tmp_path):
    """The database and its lake copied together (`cp -r project copy`): the copy takes its
    own lake (not "hold different ingests"), and stops reading the original's files."""
    warehouse.ingest(folder)
    before = warehouse.query("SELECT count(*), sum(l2) FROM units")
    copy = Warehouse(tmp_path / "copy")
    (tmp_path / "copy").mkdir()
    shutil.copy2(warehouse.db_path, copy.db_path)
    shutil.copytree(warehouse.lake, copy.lake)
    report = copy.ingest(folder)
    assert (report.ingested, report.unchanged) == (0, 3)
    assert any("its lake is now read at" in w for w in report.warnings)
    shutil.rmtree(warehouse.lake)  # the original's lake gone: the copy does not need it
    assert (
        api.connect(copy.db_path).execute("SELECT count(*), sum(l2) FROM units").fetchall()
        == before
    )
    assert_lake_equals_database(copy)


def test_a_project_moved_whole_finds_a_lake_of_its_own_name_beside_the_database(folder, tmp_path):
    from typer.testing import CliRunner
    from wpipe.cli import app

    project = tmp_path / "project"
    project.mkdir()
    ingest = ["ingest", str(folder), "-q", "--db"]
    result = CliRunner().invoke(app, [*ingest, str(project / "w.duckdb"), "--lake",
                                      str(project / "runs-lake")])  # fmt: skip
    assert result.exit_code == 0, result.output
    shutil.move(project, tmp_path / "moved")
    moved = Warehouse(tmp_path / "moved")
    con = api.connect(moved.db_path)  # a reader finds it too
    assert con.execute("SELECT count(*) FROM units").fetchone()[0] > 0
    con.close()
    result = CliRunner().invoke(app, [*ingest, str(moved.db_path)])  # no --lake
    assert result.exit_code == 0, result.output
    assert not moved.lake.exists()  # not a new, empty <db>.lake
    moved.lake = tmp_path / "moved" / "runs-lake"
    assert moved.query("SELECT count(*) FROM models") == [(3,)]
    assert_lake_equals_database(moved)


def test_a_reader_of_a_database_whose_lake_is_gone_gets_one_line(folder, warehouse):
    warehouse.ingest(folder)
    shutil.move(warehouse.lake, warehouse.lake.with_name("elsewhere"))
    with pytest.raises(api.DatabaseError, match="files of its lake are missing"):
        api.connect(warehouse.db_path)
    # a lake beside it at other versions is not taken for it
    shutil.copytree(warehouse.lake.with_name("elsewhere"), warehouse.lake)
    warehouse.ingest(MODELS / "k2_uncompiled.h5")
    shutil.move(warehouse.lake, warehouse.lake.with_name("newer"))
    shutil.move(warehouse.lake.with_name("elsewhere"), warehouse.lake)
    with pytest.raises(api.DatabaseError, match="files of its lake are missing"):
        api.connect(warehouse.db_path)


def test_a_database_without_its_lake_reads_the_files_again(folder, warehouse):
    # the database serves units, values, … from the lake's files: they went with it
    warehouse.ingest(folder)
    names = warehouse.query("SELECT model_id, name FROM model_names ORDER BY 1")
    shutil.rmtree(warehouse.lake)
    report = warehouse.ingest(folder)
    assert (report.ingested, report.unchanged) == (3, 0)
    assert any("every model file is read again" in w for w in report.warnings)
    assert warehouse.query("SELECT model_id, name FROM model_names ORDER BY 1") == names
    assert_lake_equals_database(warehouse)


def test_a_database_without_its_lake_writes_it_when_it_holds_copies(folder, warehouse):
    # a database that copied every table (its lake was on object storage) is the surviving copy
    warehouse.ingest(folder)
    copies_every_table(warehouse)
    shutil.rmtree(warehouse.lake)
    assert warehouse.ingest(folder).ingested == 0
    assert_lake_equals_database(warehouse)


def test_a_lake_of_the_older_layout_is_migrated(folder, warehouse):
    warehouse.ingest(folder)
    # rebuild the lake as wpipe 0.1 wrote it: <lake>/<model_id>/<table>.parquet
    copies_every_table(warehouse)  # as the database of that wpipe did
    con = duckdb.connect(str(warehouse.db_path), read_only=True)
    shutil.rmtree(warehouse.lake)
    for (model_id,) in con.execute("SELECT model_id FROM models").fetchall():
        part = warehouse.lake / model_id
        part.mkdir(parents=True)
        for table in schema.MODEL_TABLES:
            query = f"SELECT * FROM {table.name} WHERE model_id = '{model_id}'"
            arrow = con.sql(query).to_arrow_table()
            if arrow.num_rows:
                pq.write_table(arrow, part / f"{table.name}.parquet")
    con.close()
    con = duckdb.connect(str(warehouse.db_path))
    con.execute("DELETE FROM lake_versions")
    con.close()
    report = warehouse.ingest(folder)
    assert report.ingested == 0 and any("migrated" in w for w in report.warnings)
    assert not [p for p in warehouse.lake.iterdir() if len(p.name) == 16]
    assert_lake_equals_database(warehouse)


def test_compact_leaves_few_files_and_the_same_rows(tmp_path, warehouse):
    for run in ("a", "b", "c"):
        shutil.copytree(EXAMPLES / "cnn_lr1e-2", tmp_path / "zoo" / run)
        warehouse.ingest(tmp_path / "zoo")  # one batch per run: several files per table
    db = store.Database(warehouse.db_path)
    try:
        counts = sync.compact(db, store.Lake.open(str(warehouse.lake)))
    finally:
        db.close()
    assert all(n <= 1 for n in counts.values()), counts
    for table in schema.MODEL_TABLES:
        on_disk = list((warehouse.lake / table.name).glob("*.parquet"))
        assert len(on_disk) == counts[table.name]  # vacuumed: no unreferenced file left
    assert_lake_equals_database(warehouse)


def test_compact_merges_in_model_id_order_and_commits_no_data_change(
    tmp_path, warehouse, monkeypatch
):
    for run in ("a", "b", "c", "d"):
        shutil.copytree(EXAMPLES / "cnn_lr1e-2", tmp_path / "zoo" / run)
        warehouse.ingest(tmp_path / "zoo")
    lake = store.Lake.open(str(warehouse.lake))
    before = {
        t.name: len(DeltaTable(str(warehouse.lake / t.name)).file_uris())
        for t in schema.MODEL_TABLES
    }
    sizes = [a["size"] for a in _log_actions(warehouse.lake / "units", "add")]
    # a target that merges the units files in at least two groups
    monkeypatch.setattr("wpipe.store.lake.TARGET_FILE_BYTES", sum(sizes) // 3)
    lake.compact()
    units = DeltaTable(str(warehouse.lake / "units"))
    assert 1 < len(units.file_uris()) < before["units"]
    last = sorted((warehouse.lake / "units" / "_delta_log").glob("*.json"))[-1]
    actions = [json.loads(line) for line in last.read_text().splitlines()]
    changes = [a[k]["dataChange"] for a in actions for k in ("add", "remove") if k in a]
    assert changes and not any(changes)  # a compaction: the same rows, in other files
    # each merged file holds a run of the files sorted by their smallest model_id
    merged = [json.loads(a["add"]["stats"])["minValues"]["model_id"] for a in actions if "add" in a]
    assert merged == sorted(merged)
    assert_lake_equals_database(warehouse)


def _log_actions(table: Path, kind: str) -> list[dict]:
    """The `kind` actions of every commit in a Delta table's log, read as JSON."""
    out = []
    for commit in sorted((table / "_delta_log").glob("*.json")):
        out += [json.loads(line)[kind] for line in commit.read_text().splitlines()
                if kind in json.loads(line)]  # fmt: skip
    return out


def test_a_database_of_an_older_wpipe_gains_the_new_columns_and_is_read_again(folder, warehouse):
    warehouse.ingest(folder)
    con = duckdb.connect(str(warehouse.db_path))
    # as an older wpipe left it: without the newest weights column (weights.tied_sources),
    # rows computed by older rules
    con.execute(f"ALTER TABLE weights DROP COLUMN {TABLES['weights'].column_names[-1]}")
    con.execute(
        "UPDATE models SET ingest_options = regexp_replace(ingest_options, 'rows=\\d+ ', '')"
    )
    n_models = con.execute("SELECT count(*) FROM models").fetchall()[0][0]
    con.close()
    report = warehouse.ingest(folder)
    assert report.ingested == n_models
    columns = [r[0] for r in warehouse.query("SELECT column_name FROM duckdb_columns() "
                                             "WHERE table_name = 'weights'")]  # fmt: skip
    assert columns == TABLES["weights"].column_names
    assert_lake_equals_database(warehouse)


def test_a_writer_remakes_views_that_are_missing_or_of_other_sql_and_only_those(folder, warehouse):
    """A writer applies the view files only when the database's views were made from other
    SQL (another wpipe version) or some are gone: re-applying them on every open cost each
    ingest ~0.1 s of CPU and a WAL's writes."""
    warehouse.ingest(folder)

    def view_sql(name: str) -> str:
        return warehouse.query("SELECT sql FROM duckdb_views() WHERE view_name = ?", [name])

    def drop_and_mark(statement: str, recorded: str | None) -> None:
        con = duckdb.connect(str(warehouse.db_path))
        con.execute(statement)
        if recorded is not None:
            con.execute("UPDATE ingest_state SET value = ? WHERE name = 'views-sha256'",
                        [recorded])  # fmt: skip
        con.close()

    summary = view_sql("model_summary")
    # an edit the recorded fingerprint still vouches for is kept: the views are not re-made
    drop_and_mark("CREATE OR REPLACE VIEW architectures AS SELECT 1 AS x", None)
    store.Database(warehouse.db_path).close()
    assert "SELECT 1 AS x" in view_sql("architectures")[0][0]
    # a view that is gone, or views recorded as made from other SQL, are made again
    drop_and_mark("DROP VIEW model_summary", None)
    store.Database(warehouse.db_path).close()
    assert view_sql("model_summary") == summary
    assert "SELECT 1 AS x" not in view_sql("architectures")[0][0]
    drop_and_mark("CREATE OR REPLACE VIEW architectures AS SELECT 1 AS x", "older")
    store.Database(warehouse.db_path).close()
    assert "SELECT 1 AS x" not in view_sql("architectures")[0][0]
    assert warehouse.query("SELECT value FROM ingest_state WHERE name = 'views-sha256'") == [
        (views.fingerprint(),)
    ]


def test_a_reader_makes_its_own_views_only_when_the_stored_ones_are_of_other_sql(folder, warehouse):
    """A reader makes TEMP views of this package's SQL only when the database's views were
    made from other SQL (another wpipe version) or are gone: copying views that are already
    this wpipe's cost every read command ~0.06 s of CPU."""
    warehouse.ingest(folder)
    n_views = len(views.missing_objects(duckdb.connect()))  # every view and macro of the SQL

    def temporary_views() -> int:
        con = api.connect(warehouse.db_path)
        try:
            assert con.execute("SELECT count(*) FROM model_summary").fetchone()[0] == 3
            query = "SELECT count(*) FROM duckdb_views() WHERE temporary AND NOT internal"
            return con.execute(query).fetchone()[0]
        finally:
            con.close()

    assert temporary_views() == 0
    con = duckdb.connect(str(warehouse.db_path))
    con.execute("UPDATE ingest_state SET value = 'older' WHERE name = 'views-sha256'")
    con.close()
    assert 0 < temporary_views() <= n_views


def test_sampled_values_spilled_to_a_data_file_keep_their_rows(folder, warehouse, monkeypatch):
    # a model whose sampled values pass SPILL_ROWS streams them into a data file: the held
    # plain-string rows and the dictionary-coded batches that follow go to one file
    monkeypatch.setattr(filemap, "SPILL_ROWS", 10)
    report = warehouse.ingest(folder, values="sample:7", drift=False, file_timeout=None)
    assert (report.ingested, report.failed) == (3, [])
    expected = 0  # min(size, 7) per weight tensor, counted with h5py
    for path in folder.glob("*.h5"):
        with h5py.File(path, "r") as f:
            sizes: list[int] = []
            f["model_weights"].visititems(
                lambda _, obj, sizes=sizes: sizes.append(obj.size)
                if isinstance(obj, h5py.Dataset) else None
            )  # fmt: skip
            expected += sum(min(size, 7) for size in sizes)
    assert warehouse.query("SELECT count(*) FROM weight_values") == [(expected,)]
    assert expected > 10
    assert_lake_equals_database(warehouse)


def test_a_reader_of_an_older_database_gets_the_tables_it_lacks(folder, warehouse):
    """A database of an older wpipe lacks the tables added since (suggested_bases): a reader
    gets them as empty TEMP tables, and every view reads (a read command once failed here)."""
    warehouse.ingest(folder)
    con = duckdb.connect(str(warehouse.db_path))
    con.execute("DROP VIEW lineage_suggestions")
    con.execute("DROP TABLE suggested_bases")
    con.close()
    con = api.connect(warehouse.db_path)
    try:
        assert con.execute("SELECT count(*) FROM lineage_suggestions").fetchall() == [(0,)]
        assert con.execute("SELECT count(*) FROM model_summary").fetchall() == [(3,)]
    finally:
        con.close()
