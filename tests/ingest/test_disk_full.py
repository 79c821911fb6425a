"""A full disk ends the run with one line; the database still opens with every model loaded
before, and the next run leaves no data file its lake does not reference.

The disk is a real one that fills up: a tmpfs mounted in a private mount namespace
(`unshare --user --map-root-user --mount`, so neither root nor the host's mounts are touched),
sized to what the first ingest used plus a little, then grown again (space freed) for the
next run (the scenario the fuzz suite's disk-full family runs at several sizes).
Skipped where user namespaces are off."""

from __future__ import annotations

import shutil
import subprocess
import sys

import duckdb
import numpy as np
import pytest
from wpipe.store import Lake
from wpipe.store.lake import TABLES

from tests.conftest import MODELS, dense_config, write_legacy_h5
from tests.fuzz.runner import DISK_FULL as SCENARIO


@pytest.fixture(scope="module")
def unshare():
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode:
        pytest.skip("no unprivileged mount namespaces here (unshare --user --mount)")


def test_a_full_disk_stops_the_run_cleanly_and_the_next_run_sweeps_the_lake(tmp_path, unshare):
    first, big, out, disk = (tmp_path / n for n in ("first", "big", "out", "disk"))
    for d in (first, big, out, disk):
        d.mkdir()
    shutil.copy2(MODELS / "k2_uncompiled.h5", first / "early.h5")
    rng = np.random.default_rng(0)
    for i in range(3):  # ~6 MB of float32 each: more than the disk has left
        kernel = rng.standard_normal((1000, 1500), dtype="f4")
        write_legacy_h5(big / f"m{i}.h5", {"d": {"d/kernel:0": kernel}}, dense_config("d"))
    # 64 KB left: the three models need ~0.4 MB more (Parquet and DuckDB blocks; a writer that
    # re-makes no views writes less, so 400 KB stopped filling the disk)
    env = {"DISK": disk, "FIRST": first, "BIG": big, "OUT": out, "PYTHON": sys.executable,
           "SPARE_KB": 64, "PATH": "/usr/bin:/bin"}  # fmt: skip
    run = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", SCENARIO],
        env={k: str(v) for k, v in env.items()}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rc = {n: int((out / f"{n}.rc").read_text()) for n in ("first", "full", "next")}
    log = (out / "full.log").read_text()
    assert rc == {"first": 0, "full": 1, "next": 0}, log
    assert "Traceback" not in log
    [line] = log.splitlines()  # one line, saying what happened and what to do
    assert "the disk is full" in line and "No space left on device" in line
    assert "the models loaded before are kept" in line and "free space and run again" in line

    names = {}
    for state in ("after_full", "after_next"):  # the database opens, with the early model
        with duckdb.connect(str(out / state / "w.duckdb"), read_only=True) as con:
            names[state] = {n for (n,) in con.execute("SELECT name FROM models").fetchall()}
    assert names == {"after_full": {"early"}, "after_next": {"early", "m0", "m1", "m2"}}
    # space freed, the next run read everything and left no file its lake does not reference
    lake = Lake.open(str(out / "after_next" / "w.lake"))
    assert {t: lake.unreferenced(t) for t in TABLES} == {t: [] for t in TABLES}
    for table in ("weights", "weight_values"):
        ids = lake.dataset(table).to_table(columns=["model_id"]).column("model_id").unique()
        assert len(ids) == 4
