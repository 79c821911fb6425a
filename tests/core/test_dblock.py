"""Read commands during an ingest wait a bounded, documented time (WPIPE_WAIT) with a message,
then either read or say why not in one line naming the holder (never a bare failure)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import duckdb
import pytest
from typer.testing import CliRunner
from wpipe import store
from wpipe.cli import app

from tests.conftest import MODELS

WPIPE = [sys.executable, "-m", "wpipe.cli"]


@pytest.fixture
def db_path(tmp_path, warehouse):
    shutil.copy2(MODELS / "k2_uncompiled.h5", tmp_path / "m.h5")
    warehouse.ingest(tmp_path / "m.h5")
    return warehouse.db_path


def models_command(db_path, wait: str) -> subprocess.Popen:
    env = {**os.environ, "WPIPE_WAIT": wait}
    return subprocess.Popen([*WPIPE, "models", "--db", str(db_path), "-f", "csv"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_a_reader_waits_for_the_writer_and_then_reads(db_path):
    writer = store.Database(db_path)  # what an ingest holds for its whole run
    try:
        reader = models_command(db_path, "120")
        first = reader.stderr.readline()  # the reader is waiting now
        time.sleep(0.5)
    finally:
        writer.close()
    out, err = reader.communicate(timeout=120)
    assert first.startswith("waiting up to 120 s (WPIPE_WAIT): ")
    assert f"locked for writing by process {os.getpid()}" in first
    assert reader.returncode == 0, err
    assert out.splitlines()[1].startswith("m,")


def test_a_reader_gives_up_after_the_wait_with_one_line_naming_the_writer(db_path):
    writer = store.Database(db_path)
    try:
        reader = models_command(db_path, "1")
        out, err = reader.communicate(timeout=120)
    finally:
        writer.close()
    assert reader.returncode == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("waiting up to 1 s"), err
    assert (
        f"process {os.getpid()}" in lines[1] and "waited 1 s; WPIPE_WAIT sets the wait" in lines[1]
    )
    assert "Traceback" not in err


def test_a_bad_wait_is_one_line(db_path):
    reader = models_command(db_path, "soon")
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 2 and out == "" and err.startswith("error: WPIPE_WAIT='soon'")


@pytest.mark.parametrize("command", [["ingest", "{zoo}"], ["compact"], ["sync", "--lake", "{zoo}"]])
def test_a_file_that_is_no_wpipe_database_gets_no_lock_file_beside_it(tmp_path, command):
    """`--db mlp.h5` (a model file), or another program's DuckDB file: refused, and nothing
    is written beside it (no `mlp.h5.lock`, no lake)."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy2(MODELS / "k2_conv2d.h5", zoo / "mlp.h5")
    other = duckdb.connect(str(tmp_path / "other.duckdb"))
    other.execute("CREATE TABLE invoices (id INT)")
    other.close()
    for target in (zoo / "mlp.h5", tmp_path / "other.duckdb"):
        before = sorted(p.name for p in target.parent.iterdir())
        stamp = (target.read_bytes(), target.stat().st_mtime_ns)
        args = [a.format(zoo=zoo) for a in command]
        result = CliRunner().invoke(app, [*args, "--db", str(target)])
        assert result.exit_code == 2, result.output
        assert sorted(p.name for p in target.parent.iterdir()) == before
        assert (target.read_bytes(), target.stat().st_mtime_ns) == stamp


def test_the_api_leaves_no_lock_file_beside_a_model_file(tmp_path):
    shutil.copy2(MODELS / "k2_conv2d.h5", tmp_path / "mlp.h5")
    with pytest.raises(duckdb.Error):
        store.Database(tmp_path / "mlp.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.h5"]
