"""The scale-out rig: a real S3 endpoint (moto in server mode on 127.0.0.1) and a real Dask
cluster (`distributed.LocalCluster`, 2 worker processes), each started once per session.

Credentials and endpoint reach wpipe, s3fs, deltalake and the Dask workers only through the
standard AWS environment variables, as they would on a user's machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from wpipe.core import schema

from tests.conftest import MODELS, Warehouse

s3fs = pytest.importorskip("s3fs")
distributed = pytest.importorskip("distributed")
pytest.importorskip("moto")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "models"
# one of each layout the readers know, a save folder, a shard set and a series (for drift)
LAYOUTS = ("k2_conv2d.h5", "k3_lstm.h5", "k2_mha.keras", "k3_conv2d.weights.h5",
           "k2_dense_bn_frozen.weights_only.h5", "k3_conv2d_unzipped")  # fmt: skip


def make_zoo(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in LAYOUTS:
        source = MODELS / name
        copy = shutil.copytree if source.is_dir() else shutil.copy2
        copy(source, target / name)
    (target / "sharded").mkdir()
    for shard in MODELS.glob("k3_conv2d_sharded*"):
        shutil.copy2(shard, target / "sharded" / shard.name)
    shutil.copytree(EXAMPLES / "cnn_lr1e-2", target / "series",
                    ignore=shutil.ignore_patterns("*.csv"))  # fmt: skip
    return target


# Tags come from a path's last folders, so both copies sit under the same folder names.
PREFIX = "team/sweep/runs"


# ingest in the test's process: the worker pool is not what these tests are about
IN_PROCESS: dict = {"file_timeout": None}

# The slower end-to-end cases (a worker killed mid-ingest, a LocalCluster started by the CLI)
# run in `make test-scale`, not in `make test`: they would double this folder's cost.
slow = pytest.mark.skipif(
    not os.environ.get("WPIPE_TEST_SCALE_SLOW"), reason="slow scale-out case: make test-scale"
)

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}  # plus AWS_ENDPOINT_URL; that it is plain http is wpipe's to notice (remote.storage_options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer at {url} within {limit:.0f} s")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server in its own process; the AWS settings point at it for the session."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"]}
    try:
        _wait_up(f"{url}/moto-api/", proc)
        os.environ.update(AWS_ENV, AWS_ENDPOINT_URL=url)
        os.environ.pop("AWS_ALLOW_HTTP", None)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> s3fs.S3FileSystem:
    """An s3fs filesystem on the moto server (configured from the environment alone)."""
    return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture
def bucket(s3: s3fs.S3FileSystem) -> str:
    """A fresh, empty bucket for one test."""
    name = f"wpipe-{uuid.uuid4().hex[:12]}"
    s3.mkdir(name)
    return name


def upload(s3: s3fs.S3FileSystem, local: Path, url: str) -> None:
    """Copy a file or a folder tree to `url` (s3://bucket/prefix)."""
    if local.is_dir():
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            s3.put_file(str(path), f"{url.rstrip('/')}/{path.relative_to(local).as_posix()}")
    else:
        s3.put_file(str(local), url)
    s3.invalidate_cache()


@pytest.fixture(scope="session")
def dask_cluster(s3_endpoint: str) -> Iterator[distributed.LocalCluster]:
    """Two single-threaded worker processes (started after the AWS settings, which they
    inherit), as a small real cluster."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        host="127.0.0.1",
        silence_logs=40,
    )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo") / PREFIX)


def python_line(code: str) -> str:
    """The one line a fresh interpreter prints running `code` (which must not fail)."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.strip().splitlines()
    return line


# Tables compared between a local and an S3 ingest: every table an ingest fills except
# model_metrics (training logs next to checkpoints are attached for local folders only, and
# the zoo has none) and ingest_errors (the S3 run has a bad file on purpose).
COMPARED = (*(t.name for t in schema.MODEL_TABLES), "drift", "model_tags", "model_names")
WHERE_COLUMNS = {"path", "ingested_at", "mtime", "named_at"}  # where and when, not what


def tables_paths_aside(db_path: Path, root: str) -> dict[str, list[tuple]]:
    """Every compared table's rows with model ids replaced by the file's path below `root`
    and the where/when columns dropped, sorted: equal for equal files wherever they live."""
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        relative = {
            model_id: path[len(root) :].lstrip("/")
            for model_id, path in con.execute("SELECT model_id, path FROM models").fetchall()
        }
        out = {}
        for table in COMPARED:
            cursor = con.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cursor.description]
            rows = []
            for row in cursor.fetchall():
                rows.append(
                    tuple(
                        _aside(n, v, relative, root)
                        for n, v in zip(names, row, strict=True)
                        if n not in WHERE_COLUMNS
                    )
                )
            out[table] = sorted(rows, key=repr)
        return out
    finally:
        con.close()


def _aside(column: str, value, relative: dict[str, str], root: str):
    if column in ("model_id", "model_a", "model_b"):
        return relative.get(value, value)
    if column == "series" and isinstance(value, str):
        return value.removeprefix(root)
    return value


@pytest.fixture(scope="session")
def local_tables(zoo, tmp_path_factory) -> dict[str, list[tuple]]:
    """The zoo ingested from local disk into a local lake: what every other way must give."""
    root = tmp_path_factory.mktemp("local")
    report = Warehouse(root).ingest(zoo, **IN_PROCESS)
    assert not report.failed
    return tables_paths_aside(root / "w.duckdb", str(zoo))


@dataclass
class S3Run:
    warehouse: Warehouse  # its lake is on S3
    models: str  # the s3:// prefix ingested
    broken: str  # the URL of a bad object in it
    report: object


@pytest.fixture(scope="session")
def s3_run(s3, zoo, dask_cluster, tmp_path_factory) -> S3Run:
    """The zoo plus a broken object in a bucket, ingested on the Dask cluster into a lake in
    the same bucket: the run the scale-out tests look at."""
    bucket = f"wpipe-run-{uuid.uuid4().hex[:8]}"
    s3.mkdir(bucket)
    models = f"s3://{bucket}/{PREFIX}"
    upload(s3, zoo, models)
    broken = f"{models}/broken.keras"
    s3.pipe_file(broken, b"PK\x03\x04 not really a zip")
    s3.invalidate_cache()
    w = Warehouse(tmp_path_factory.mktemp("s3run"))
    w.lake = f"s3://{bucket}/lake"
    report = w.ingest(models, dask=dask_cluster.scheduler_address)
    return S3Run(w, models, broken, report)
