"""A full disk ends the run with one line; the database still opens with every model loaded
before, and no lake partition is left without its models row. Runs on a small tmpfs (needs
root and mount; skipped elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import duckdb
import numpy as np
import pytest

from tests.conftest import MODELS, dense_config, write_legacy_h5

WPIPE = [sys.executable, "-m", "wpipe.cli"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if made.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_stops_the_run_cleanly_and_keeps_what_was_loaded(tmp_path, small_disk):
    first, big = tmp_path / "first", tmp_path / "big"
    first.mkdir()
    big.mkdir()
    shutil.copy2(MODELS / "k2_uncompiled.h5", first / "early.h5")
    rng = np.random.default_rng(0)
    for i in range(3):  # ~6 MB of weight_values each: more than the disk holds
        kernel = rng.random((1000, 1500), dtype="f4")
        write_legacy_h5(big / f"m{i}.h5", {"d": {"d/kernel:0": kernel}}, dense_config("d"))
    db = small_disk / "w.duckdb"
    ingest = [*WPIPE, "ingest", "--db", str(db), "-j", "1", "--no-drift", "--spectra", "none"]
    assert subprocess.run([*ingest, str(first)], capture_output=True).returncode == 0
    run = subprocess.run([*ingest, str(big)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    [line] = [x for x in run.stderr.splitlines() if x.startswith("error:")]
    assert "No space left on device" in line and "free space and run again" in line
    with duckdb.connect(str(db), read_only=True) as con:
        ids = {i for (i,) in con.execute("SELECT model_id FROM models").fetchall()}
        names = {n for (n,) in con.execute("SELECT name FROM models").fetchall()}
    assert "early" in names
    lake = small_disk / "w.lake"
    partitions = {p.name for p in lake.iterdir() if not p.name.startswith(".")}
    assert partitions <= ids and not list((lake / ".tmp").glob("*"))
    os.sync()
