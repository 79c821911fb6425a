"""Read commands during an ingest wait a bounded time with a message, then either read or say
why not in one line (never a bare failure); the writer lock refuses a second writer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from wpipe import store
from wpipe.dblock import DatabaseBusy, WriterLock

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
    writer = store.Database(db_path)
    reader = models_command(db_path, "120")
    first = reader.stderr.readline()  # the reader is waiting now
    time.sleep(1)
    writer.close()
    out, err = reader.communicate(timeout=120)
    assert first == "waiting up to 120 s: an ingest is writing the database\n"
    assert reader.returncode == 0, err
    assert out.splitlines()[1].startswith("m,")


def test_a_reader_gives_up_after_the_wait_with_one_line(db_path):
    writer = store.Database(db_path)
    try:
        reader = models_command(db_path, "1")
        out, err = reader.communicate(timeout=120)
    finally:
        writer.close()
    assert reader.returncode == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith("waiting up to 1 s")
    assert len(lines) == 2 and "is writing it; waited 1 s" in lines[1]
    assert "Traceback" not in err


def test_the_writer_lock_is_exclusive_and_released_on_close(db_path):
    first = store.Database(db_path)
    try:
        with pytest.raises(DatabaseBusy):
            WriterLock(db_path)  # this process, another open file description: refused
    finally:
        first.close()
    WriterLock(db_path).release()
