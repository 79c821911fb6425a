"""The folder walk opens only regular files: FIFOs, devices, dangling and looping symlinks
named like models are reported (never opened, never raised), and the database, its WAL, its
lock file and the lake are never candidates, wherever they live and whatever names lead to
them; a second writer is refused before it changes anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest
from wpipe import store
from wpipe.core.dblock import DatabaseBusy, Protected, WriterLock, protected_paths
from wpipe.readers.walk import walk as discover

from tests.conftest import MODELS
from tests.fuzz.deep import nest, remove_tree

GOOD = MODELS / "k2_uncompiled.h5"
WPIPE = [sys.executable, "-m", "wpipe.cli"]


def hostile_tree(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    shutil.copy2(GOOD, root / "good.h5")
    os.mkfifo(root / "pipe.h5")
    os.symlink("/dev/zero", root / "zero.h5")
    os.symlink(root / "gone.h5", root / "dangling.h5")
    os.symlink(root / "loop.h5", root / "loop.h5")
    os.symlink("/dev/null", root / "notes.txt")  # not named like a model: passed over
    return root


def test_special_files_and_broken_symlinks_are_reported_not_opened(tmp_path):
    root = hostile_tree(tmp_path / "runs")
    found, skipped = discover([root])
    assert found == [root / "good.h5"]
    assert {s.path.name: s.code for s in skipped} == {
        "pipe.h5": "not-a-regular-file",
        "zero.h5": "not-a-regular-file",
        "dangling.h5": "dangling-symlink",
        "loop.h5": "symlink-loop",
    }
    messages = {s.path.name: s.message for s in skipped}
    assert "FIFO" in messages["pipe.h5"] and "character device" in messages["zero.h5"]
    assert str(root / "gone.h5") in messages["dangling.h5"]


def test_a_named_special_file_is_reported_too(tmp_path):
    root = hostile_tree(tmp_path / "runs")
    found, skipped = discover([root / "pipe.h5", root / "good.h5"])
    assert found == [root / "good.h5"] and [s.code for s in skipped] == ["not-a-regular-file"]


def test_the_database_wal_and_lake_are_never_candidates(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copy2(GOOD, root / "good.h5")
    db = store.Database(root / "wpipe.duckdb")
    try:
        (root / "wpipe.duckdb.wal").write_bytes(b"\x89HDF\r\n\x1a\n")  # sniffs like HDF5
        (root / "wpipe.lake").mkdir()
        shutil.copy2(GOOD, root / "wpipe.lake" / "m.h5")
        os.link(root / "wpipe.duckdb", root / "alias.h5")  # another name for the database
        os.symlink(root / "wpipe.duckdb", root / "sym.h5")  # and a third
        found, skipped = discover([root], Protected(protected_paths(db.path, root / "wpipe.lake")))
    finally:
        db.close()
    assert found == [root / "good.h5"] and not skipped


def test_the_walk_leaves_the_writer_lock_held(tmp_path):
    """The root cause of a corrupted database: sniffing the database file closed a descriptor
    of it, which drops DuckDB's POSIX lock, and a second writer got in."""
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copy2(GOOD, root / "good.h5")
    db = store.Database(root / "wpipe.duckdb")
    try:
        discover([root], Protected(protected_paths(db.path, root / "wpipe.lake")))
        probe = f"import duckdb; duckdb.connect({str(root / 'wpipe.duckdb')!r})"
        second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert second.returncode != 0 and "lock" in second.stderr.lower()
    finally:
        db.close()


def test_a_second_writer_is_refused_before_it_changes_anything(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    shutil.copy2(GOOD, root / "good.h5")
    db_path = root / "wpipe.duckdb"
    first = store.Database(db_path)  # an ingest in progress, the database inside its folder
    try:
        lake = store.Lake.open(str(root / "wpipe.lake"))
        lake.versions()  # its tables exist
        # a worker's data file, written but not committed yet: a sweep would delete it
        in_flight = root / "wpipe.lake" / "weights" / "part-in-flight.parquet"
        in_flight.write_bytes(b"PAR1")
        before = {
            p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".lock" not in p.name
        }
        run = subprocess.run(
            [*WPIPE, "ingest", str(root), "--db", str(db_path)],
            capture_output=True, text=True, cwd=root, timeout=120,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr
        [line] = run.stderr.splitlines()
        assert "cannot open for writing" in line and f"PID {os.getpid()}" in line
        assert "Traceback" not in run.stderr
        after = {
            p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".lock" not in p.name
        }
        assert after == before  # database, WAL, lake: not a byte changed, nothing removed
    finally:
        first.close()
    with duckdb.connect(str(db_path)) as con:  # and it still reads
        assert con.execute("SELECT count(*) FROM models").fetchone() == (0,)


def test_the_lock_survives_the_walk_closing_other_descriptors(tmp_path):
    """flock belongs to the lock file's own open file description: opening and closing the
    database file (what a walk sniffing it did) drops DuckDB's POSIX lock, never this one."""
    db_path = tmp_path / "w.duckdb"
    first = store.Database(db_path)
    try:
        with open(db_path, "rb") as fh:  # drops DuckDB's record lock in this process
            fh.read(8)
        with pytest.raises(DatabaseBusy, match=f"PID {os.getpid()}"):
            WriterLock(db_path)
    finally:
        first.close()
    WriterLock(db_path).release()  # released with the database


@pytest.mark.parametrize("jobs", ["2"])
def test_an_ingest_of_a_hostile_tree_finishes_and_reports_each_file(tmp_path, jobs):
    root = hostile_tree(tmp_path / "runs")
    started = time.monotonic()
    run = subprocess.run(
        [*WPIPE, "ingest", str(root), "-j", jobs, "--db", str(root / "wpipe.duckdb")],
        capture_output=True, text=True, cwd=root, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - started < 100
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    failed = [line for line in run.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 4
    with duckdb.connect(str(root / "wpipe.duckdb"), read_only=True) as con:
        errors = dict(con.execute("SELECT path, error FROM ingest_errors").fetchall())
        models = con.execute("SELECT path FROM models").fetchall()
    assert models == [(str(root / "good.h5"),)]
    assert errors == {
        str(root / "pipe.h5"): "not-a-regular-file",
        str(root / "zero.h5"): "not-a-regular-file",
        str(root / "dangling.h5"): "dangling-symlink",
        str(root / "loop.h5"): "symlink-loop",
    }


@pytest.fixture
def deep():
    """A folder `runs` with GOOD as good.h5 in it, for `nest` to build in. Outside pytest's
    own temporary folders (pytest removes old ones recursively: one left deep by a killed
    test would break every later session's clean-up), removed by `remove_tree`."""
    where = Path(tempfile.mkdtemp(prefix="wpipe-deep-"))
    top = where / "runs"
    top.mkdir()
    shutil.copy2(GOOD, top / "good.h5")
    yield top
    remove_tree(where)


def with_good(levels: dict[int, str]) -> dict[int, tuple[str, bytes]]:
    return {level: (name, GOOD.read_bytes()) for level, name in levels.items()}


def test_a_folder_nested_1200_deep_is_walked_to_the_depth_limit_and_reported(deep):
    from wpipe.readers.walk import MAX_DEPTH

    top = deep
    nest(top, "d", 1200, with_good({50: "mid.h5", MAX_DEPTH: "last.h5", MAX_DEPTH + 1: "x.h5"}))
    found, skipped = discover([top])
    chain = Path(*["d"] * MAX_DEPTH)
    assert found == [top / "good.h5", top / Path(*["d"] * 50) / "mid.h5", top / chain / "last.h5"]
    [deep] = skipped
    assert (deep.path, deep.code) == (top / chain / "d", "too-deep")
    assert str(deep.path) in deep.message and f"more than {MAX_DEPTH} levels" in deep.message


def test_a_folder_whose_path_is_longer_than_path_max_is_reported_and_the_rest_walked(deep):
    top = deep
    name = "n" * 250  # 20 levels: ~5 KB of path, past Linux's 4096-byte PATH_MAX
    nest(top, name, 20, with_good({3: "reachable.h5", 19: "unreachable.h5"}))
    found, skipped = discover([top])
    assert found == [top / "good.h5", top / Path(*[name] * 3) / "reachable.h5"]
    [long] = skipped
    assert long.code == "io-error" and len(os.fsencode(long.path)) > 4096 > len(
        os.fsencode(long.path.parent)
    )
    assert "longer than the system accepts" in long.message


def test_an_ingest_of_a_deep_folder_stores_the_good_files_and_one_error_row(deep, warehouse):
    from wpipe.readers.walk import MAX_DEPTH

    top = deep
    nest(top, "d", 1200, with_good({1100: "lost.h5"}))
    report = warehouse.ingest(top, drift=False)
    assert report.ingested == 1 and [o.error for o in report.failed] == ["too-deep"]
    assert warehouse.query("SELECT path FROM models") == [(str(top / "good.h5"),)]
    deeper = top / Path(*["d"] * (MAX_DEPTH + 1))
    assert warehouse.query("SELECT path, error FROM ingest_errors") == [(str(deeper), "too-deep")]
