"""store.sync.pull (`wpipe sync`) from an S3 lake other runs wrote, DuckDB on the lake in
place, and the lake's commits on S3 (conditional puts)."""

from __future__ import annotations

import shutil

import boto3
import botocore.exceptions
import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner
from wpipe import api
from wpipe.cli import app
from wpipe.core import schema
from wpipe.store import write_data_file
from wpipe.store.remote import open_lake

from tests.conftest import MODELS, Warehouse
from tests.scale.conftest import IN_PROCESS

runner = CliRunner()
# every table an ingest fills (model_metrics comes from training logs: none here)
TABLES = [t.name for t in schema.ALL_TABLES if t.name != "model_metrics"]
# columns of a database's own: when it computed its suggested bases
LOCAL = {"suggested_bases": "EXCLUDE (computed_at)"}


def dump(db_path) -> dict[str, list[tuple]]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return {t: sorted(con.execute(f"SELECT * {LOCAL.get(t, '')} FROM {t}").fetchall(), key=repr)
                for t in TABLES}  # fmt: skip
    finally:
        con.close()


def sync(lake: str, db) -> str:
    result = runner.invoke(app, ["sync", "--lake", lake, "--db", str(db)])
    assert result.exit_code == 0, result.output
    return result.output


def test_sync_into_a_fresh_database_equals_the_ingesting_one(s3_run, tmp_path):
    fresh = tmp_path / "fresh.duckdb"
    said = sync(s3_run.warehouse.lake, fresh)
    assert f"{s3_run.report.ingested} models loaded" in said
    theirs, ours = dump(s3_run.warehouse.db_path), dump(fresh)
    assert ours["drift"] and ours["ingest_errors"] and ours["model_tags"] and ours["model_names"]
    assert ours == theirs
    assert "up to date" in sync(s3_run.warehouse.lake, fresh)


def test_sync_loads_only_what_changed(tmp_path):
    """Incremental: after a second ingest (one model added, one pruned) the follower loads
    one model and drops one. (A local lake: the same code path as S3, at a tenth the cost.)"""
    models = tmp_path / "m"
    models.mkdir()
    for name in ("k2_conv2d.h5", "k3_lstm.h5"):
        shutil.copy2(MODELS / name, models / name)
    (tmp_path / "w").mkdir()
    writer = Warehouse(tmp_path / "w")
    writer.ingest(models, **IN_PROCESS)
    reader = tmp_path / "reader.duckdb"
    assert "2 models loaded" in sync(str(writer.lake), reader)
    shutil.copy2(MODELS / "k2_mha.h5", models / "k2_mha.h5")  # one new model
    (models / "k3_lstm.h5").unlink()  # and one gone
    writer.ingest(models, prune=True, **IN_PROCESS)
    said = sync(str(writer.lake), reader)
    assert "1 models loaded, 1 removed" in said
    assert dump(reader) == dump(writer.db_path)


def test_duckdb_queries_the_s3_lake_in_place_without_extensions(s3_run):
    con = api.connect_lake(s3_run.warehouse.lake)
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    sql = "SELECT count(*), sum(n_params) FROM models UNION ALL SELECT count(*), 0 FROM weights"
    assert con.execute(sql).fetchall() == s3_run.warehouse.query(sql)
    drift = "SELECT count(*), round(sum(rel_l2), 9) FROM drift"
    assert con.execute(drift).fetchall() == s3_run.warehouse.query(drift)
    loaded = con.execute(
        "SELECT extension_name FROM duckdb_extensions() WHERE (loaded OR installed) AND "
        "extension_name IN ('httpfs', 'aws', 'delta', 'azure')"
    ).fetchall()
    assert loaded == []


def test_two_committers_on_an_s3_table_lose_nothing(s3, bucket):
    """Commits go through conditional puts (no rename, no lock service): a writer that lost
    the race retries on the next version instead of overwriting the winner's commit."""
    lake = f"s3://{bucket}/race"
    first, second = open_lake(lake), open_lake(lake)
    start = first.table("models").version()
    assert second.table("models").version() == start  # both hold the same snapshot
    for i, handle in enumerate((first, second)):
        row = {c.name: None for c in schema.MODELS.columns} | {"model_id": f"{i:016x}"}
        rows = pa.Table.from_pylist([row], schema=schema.MODELS.arrow_schema)
        handle.commit("models", [write_data_file(handle.location, "models", rows)])
    dt = DeltaTable(f"{lake}/models", storage_options=first.location.storage_options)
    assert dt.version() == start + 2
    # what made it safe: the endpoint refuses a second create of the same log entry
    log = f"race/models/_delta_log/{start + 1:020d}.json"
    with pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed"):
        boto3.client("s3").put_object(Bucket=bucket, Key=log, Body=b"{}", IfNoneMatch="*")
    ids = sorted(dt.to_pyarrow_table().column("model_id").to_pylist())
    assert ids == ["0000000000000000", "0000000000000001"]


def test_sync_from_a_prefix_without_a_lake_is_one_line(s3, bucket, tmp_path):
    result = runner.invoke(app, ["sync", "--lake", f"s3://{bucket}/nothing", "--db",
                                 str(tmp_path / "s.duckdb")])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.startswith(f"error: s3://{bucket}/nothing: ")
    assert len(result.output.strip().splitlines()) == 1
