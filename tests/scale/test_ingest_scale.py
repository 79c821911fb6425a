"""ingest with models and lake on S3 (a real moto server) and the per-file map on a real Dask
cluster (LocalCluster, 2 worker processes): the same rows as a local ingest of the same files."""

from __future__ import annotations

import os
import signal

import distributed
from wpipe.ingest.plan import Report

from tests.conftest import Warehouse
from tests.scale.conftest import slow, tables_paths_aside


def test_s3_ingest_on_dask_gives_the_rows_of_a_local_ingest(s3_run, local_tables):
    report, w = s3_run.report, s3_run.warehouse
    assert [o.path for o in report.failed] == [s3_run.broken]
    assert report.ingested == len(local_tables["models"])
    assert local_tables["drift"] and local_tables["weight_values"]  # a comparison of something
    assert tables_paths_aside(w.db_path, s3_run.models) == local_tables


def test_a_bad_file_in_the_bucket_lands_in_ingest_errors(s3_run):
    [(path, error, message)] = s3_run.warehouse.query(
        "SELECT path, error, message FROM ingest_errors"
    )
    assert path == s3_run.broken and message.startswith(f"{path}: ")
    assert error == next(o.error for o in s3_run.report.failed)


def test_a_rerun_on_dask_changes_nothing(s3_run, local_tables, dask_cluster):
    w = s3_run.warehouse
    before = w.query("SELECT model_id, sha256, ingested_at FROM models ORDER BY 1")
    again = w.ingest(s3_run.models, dask=dask_cluster.scheduler_address)
    assert (again.ingested, again.unchanged) == (0, len(local_tables["models"]))
    assert [o.error for o in again.failed] == ["unchanged-failure"]
    assert w.query("SELECT model_id, sha256, ingested_at FROM models ORDER BY 1") == before
    assert tables_paths_aside(w.db_path, s3_run.models) == local_tables


def ingest_killing_a_worker(dask_cluster, w: Warehouse, source: str) -> tuple[Report, list]:
    """`w.ingest(source)` on the cluster, SIGKILLing a worker busy with a task when the first
    outcome arrives; the killed workers' addresses (one) with the report."""
    killed = []
    with distributed.Client(dask_cluster) as client:
        pids = client.run(os.getpid)

        def kill_a_busy_worker(outcome):
            busy = [w for w, tasks in client.processing().items() if tasks]
            if not killed and busy:  # a worker in the middle of a task
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])

        report = w.ingest(source, dask=dask_cluster.scheduler_address,
                          on_done=kill_a_busy_worker)  # fmt: skip
        client.wait_for_workers(2, timeout=60)  # the nanny replaced the killed process
    return report, killed


@slow
def test_a_worker_killed_mid_run_leaves_no_duplicates(dask_cluster, s3_run, local_tables,
                                                      tmp_path):  # fmt: skip
    w = Warehouse(tmp_path)
    w.lake = f"{s3_run.warehouse.lake}-killed"
    report, killed = ingest_killing_a_worker(dask_cluster, w, s3_run.models)
    assert killed
    assert [o.path for o in report.failed] == [s3_run.broken]
    assert report.ingested == len(local_tables["models"])
    assert tables_paths_aside(w.db_path, s3_run.models) == local_tables


def test_local_files_on_dask_are_read_in_chunks_with_the_rows_of_a_local_ingest(
    zoo, dask_cluster, local_tables, tmp_path
):
    w = Warehouse(tmp_path)
    report = w.ingest(zoo, dask=dask_cluster.scheduler_address, jobs=1)
    assert not report.failed and report.ingested == len(local_tables["models"])
    assert tables_paths_aside(w.db_path, str(zoo)) == local_tables
    # each chunk's worker wrote one data file of its files' layers (a file per task would
    # have sent its rows to the driver, which writes one per batch)
    layer_files = list((w.lake / "layers").glob("**/*.parquet"))
    assert 1 < len(layer_files) < report.ingested


@slow
def test_a_worker_killed_mid_chunk_leaves_no_duplicates(zoo, dask_cluster, local_tables,
                                                        tmp_path):  # fmt: skip
    w = Warehouse(tmp_path)
    report, killed = ingest_killing_a_worker(dask_cluster, w, str(zoo))
    assert killed
    assert not report.failed and report.ingested == len(local_tables["models"])
    assert tables_paths_aside(w.db_path, str(zoo)) == local_tables
