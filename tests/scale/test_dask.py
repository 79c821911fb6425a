"""workers.map_files_on_dask: the per-file map on a real Dask cluster (LocalCluster, 2 worker
processes), here over model saves on S3 (each task copies its save and hashes it)."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import dask
import distributed
import pytest
from wpipe.ingest import workers
from wpipe.ingest.driver import discover
from wpipe.ingest.filemap import sha256_of
from wpipe.store import remote

from tests.scale.conftest import PREFIX, python_line, upload


def hash_save(save: remote.RemoteSave) -> str:
    """The per-file task of these tests: copy a save from S3, then hash it as ingest does."""
    with remote.fetched(save) as local:
        return sha256_of(str(local))


def slow_hash_save(save: remote.RemoteSave) -> str:
    time.sleep(0.3)  # long enough to be caught mid-task
    return hash_save(save)


def fail_on_lstm(save: remote.RemoteSave) -> str:
    if "lstm" in save.url:
        raise ValueError("a bug met on this file")
    return hash_save(save)


@pytest.fixture(scope="module")
def saves(s3, zoo) -> list[remote.RemoteSave]:
    bucket = "wpipe-dask-zoo"
    s3.mkdir(bucket)
    upload(s3, zoo, f"s3://{bucket}/{PREFIX}")
    return remote.discover([f"s3://{bucket}/{PREFIX}"], discover).saves


def keys(items: list[remote.RemoteSave], salt: str = "") -> list[str]:
    return [workers.task_key((salt, s.url, s.size, s.tag)) for s in items]


def local_sha(zoo, save: remote.RemoteSave) -> str:
    """sha256_of over the local file, independently: hashlib on the bytes of a plain file."""
    path = zoo / save.url.split(f"{PREFIX}/", 1)[1]
    if path.is_file() and len(save.members) == 1:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return sha256_of(str(path))


def test_every_file_yields_its_result_once(dask_cluster, saves, zoo):
    address = dask_cluster.scheduler_address
    results = list(
        workers.map_files_on_dask(hash_save, saves, address, 2, keys(saves, "a"), lambda s: s.url)
    )
    assert sorted(s.url for s, _ in results) == sorted(s.url for s in saves)
    assert {s.url: sha for s, sha in results} == {s.url: local_sha(zoo, s) for s in saves}


def test_a_task_that_raises_is_an_internal_error_for_that_file_only(dask_cluster, saves):
    results = dict(workers.map_files_on_dask(
        fail_on_lstm, saves, dask_cluster.scheduler_address, 2, keys(saves, "b"),
        lambda s: s.url))  # fmt: skip
    failed = {s.url: r for s, r in results.items() if isinstance(r, workers.WorkerFailure)}
    assert [u.rsplit("/", 1)[1] for u in failed] == ["k3_lstm.h5"]
    [failure] = failed.values()
    assert failure.code == "internal-error"
    assert failure.message.startswith(f"{next(iter(failed))}: wpipe failed on this file")
    assert len(results) == len(saves)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(dask_cluster, saves, zoo):
    killed = []
    with distributed.Client(dask_cluster) as client:
        pids = client.run(os.getpid)
        results = []
        for save, sha in workers.map_files_on_dask(
            slow_hash_save, saves, dask_cluster.scheduler_address, 2, keys(saves, "c"),
            lambda s: s.url,
        ):  # fmt: skip
            results.append((save.url, sha))
            busy = [w for w, tasks in client.processing().items() if tasks]
            if not killed and busy:  # a worker in the middle of a file
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed.append(busy[0])
        client.wait_for_workers(2, timeout=60)  # the nanny replaced the killed process
    assert killed
    assert sorted(results) == sorted((s.url, local_sha(zoo, s)) for s in saves)


def test_task_keys_follow_content_and_settings():
    base = ("s3://b/m.h5", 10, 1.0, '"etag1"', None, "values=all", "lake")
    assert workers.task_key(base) == workers.task_key(tuple(base))
    assert workers.task_key(base) != workers.task_key((*base[:3], '"etag2"', *base[4:]))
    assert workers.task_key(base) != workers.task_key((*base[:5], "values=none", base[6]))


def test_an_unreachable_scheduler_is_a_connection_error_naming_it():
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        pytest.raises(ConnectionError, match=r"^--dask tcp://127\.0\.0\.1:9: "),
    ):
        list(workers.map_files_on_dask(str, ["x"], "tcp://127.0.0.1:9", 1, ["k"]))


def test_without_the_extra_dask_is_one_line_naming_the_pip_command():
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from wpipe.ingest import workers; from wpipe.core import extras\n"
            "try:\n    list(workers.map_files_on_dask(str, ['x'], 'local', 1, ['k']))\n"
            "except extras.MissingExtra as exc:\n    print(exc)\n")  # fmt: skip
    line = python_line(code)
    assert line.endswith("pip install 'wpipe[dask]'")
