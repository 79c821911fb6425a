"""The per-file executor runs each item in a real worker process: a hung item is stopped after
its timeout, a worker killed by a signal is replaced, an exception is one item's failure."""

from __future__ import annotations

import os
import signal
import time

import pytest
from wpipe.workers import WorkerFailure, map_files


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
