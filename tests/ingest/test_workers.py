"""The per-file executor runs each item in a real worker process: a hung item is stopped after
its timeout, a worker killed by a signal is replaced, an exception is one item's failure."""

from __future__ import annotations

import os
import signal
import time

import pytest
from wpipe.ingest.workers import WorkerFailure, map_files, scaled_limit

from tests.fuzz.cases import SOURCES, damaged


def task(item: str) -> str:
    if item == "hang":
        time.sleep(600)
    if item == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if item == "raise":
        raise ValueError("bad item")
    return item.upper()


@pytest.mark.parametrize("jobs", [1, 2])
def test_each_failure_is_one_items_outcome_and_the_rest_complete(jobs: int) -> None:
    started = time.monotonic()
    results = dict(map_files(task, ["a", "hang", "b", "die", "raise", "c"], jobs, timeout=2.0))
    assert time.monotonic() - started < 60  # the hung item did not hold the run
    assert {k: results[k] for k in "abc"} == {"a": "A", "b": "B", "c": "C"}
    assert results["hang"] == WorkerFailure("timeout", results["hang"].message)
    assert "stopped after 2 s" in results["hang"].message
    assert results["die"].code == "worker-died"
    assert "signal 9" in results["die"].message
    assert results["raise"].code == "internal-error"
    assert "ValueError: bad item" in results["raise"].message


def test_no_timeout_and_one_job_runs_in_this_process() -> None:
    assert list(map_files(lambda x: os.getpid(), ["x"], jobs=1, timeout=None)) == [
        ("x", os.getpid())
    ]


def test_an_exception_in_process_is_an_outcome_too() -> None:
    [(_, result)] = map_files(task, ["raise"], jobs=1, timeout=None, name=lambda i: f"<{i}>")
    assert result.code == "internal-error" and result.message.startswith("<raise>:")


def test_the_default_time_limit_grows_with_the_bytes_of_a_task() -> None:
    small, gigabyte = scaled_limit([20_000]), scaled_limit([1 << 30])
    assert 10 < small < 12  # a few seconds for a small file
    assert 500 < gigabyte < 600  # minutes for a GB
    assert scaled_limit([20_000] * 64) < 80  # a chunk of 64 small files


def test_a_small_file_that_makes_hdf5_loop_is_stopped_in_seconds_by_default(tmp_path, warehouse):
    """A 20 KB damaged file (fuzz seed 34) on which the HDF5 library loops (still running
    after 90 s): stopped by the default limit for its size, with a message that says so."""
    folder = tmp_path / "models"
    folder.mkdir()
    damaged(SOURCES[34 % len(SOURCES)], 34)(folder)
    [path] = folder.iterdir()
    started = time.monotonic()
    report = warehouse.ingest(folder, drift=False)  # the default limit
    assert time.monotonic() - started < 60
    [failed] = report.failed
    assert failed.error == "timeout" and str(path) in failed.message
    limit = scaled_limit([path.stat().st_size])
    assert f"stopped after {limit:.0f} s (the default limit for its size" in failed.message
