"""Late kills: `kill -9` an ingest of checkpoint series (the demo's three series of five
checkpoints and two single models) at many moments, the late ones in the last batch and in
the final store, then ingest again; the re-run's drift table must equal an uninterrupted run's.

A kill's moment is an event the ingest leaves in its folders plus a delay: `start` (the
process began), `commit` (the lake's `models` log got the batch's commit: what follows is the
load, the drift store and the run's last steps). The uninterrupted run measures how long each
stretch takes, and the points are spread over them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from tests.conftest import EXAMPLES
from tests.fuzz.cases import Case

WPIPE = [sys.executable, "-m", "wpipe.cli"]
DRIFT_COLUMNS = ("model_a, model_b, layer_path, weight_name, series, sha256_a, sha256_b, size, "
                 "round(rel_l2, 9), round(cosine, 9), round(max_abs_change, 9)")  # fmt: skip


def ingest_command(models: Path, db: Path) -> list[str]:
    return [*WPIPE, "ingest", str(models), "--db", str(db), "-j", "2"]


def drift_rows(db: Path) -> set[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return set(con.execute(f"SELECT {DRIFT_COLUMNS} FROM drift").fetchall())


def committed(lake: Path) -> bool:
    log = lake / "models" / "_delta_log"
    return log.is_dir() and any(p.suffix == ".json" for p in log.iterdir())


def timed_run(models: Path, db: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """An uninterrupted ingest: (seconds to the models commit, seconds after it, the run)."""
    lake = db.with_suffix(".lake")
    started = time.monotonic()
    proc = subprocess.Popen(ingest_command(models, db), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    at_commit = None
    while proc.poll() is None:
        if at_commit is None and committed(lake):
            at_commit = time.monotonic()
        time.sleep(0.005)
    out, err = proc.communicate()
    ended = time.monotonic()
    at_commit = at_commit or ended
    run = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return at_commit - started, ended - at_commit, run


def kill_points(before: float, after: float, n: int) -> list[tuple[str, float]]:
    """n moments: a third before the commit (from the start), the rest after it, the last
    ones near the end of the run."""
    early = max(1, n // 3)
    late = n - early
    points = [("start", before * (i + 1) / (early + 1)) for i in range(early)]
    points += [("commit", after * i / max(1, late)) for i in range(late)]
    return points


def kill_at(models: Path, db: Path, event: str, delay: float) -> None:
    proc = subprocess.Popen(ingest_command(models, db), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    lake = db.with_suffix(".lake")
    while event == "commit" and proc.poll() is None and not committed(lake):
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, 9)  # the driver and its workers
    proc.wait()


def run_late_kills(points: int, root: Path):
    """Kill at `points` moments; each re-run's drift must be the uninterrupted run's."""
    from tests.fuzz.runner import BatchResult

    models = root / "series"
    shutil.copytree(EXAMPLES, models)
    before, after, clean = timed_run(models, root / "clean.duckdb")
    reference = drift_rows(root / "clean.duckdb")
    moments = kill_points(before, after, points)
    result = BatchResult([Case("late kills", f"{e}+{d:.2f}s", lambda d: None)
                          for e, d in moments])  # fmt: skip
    if clean.returncode != 0 or clean.stderr.strip() or len(reference) == 0:
        result.problems.append(f"uninterrupted run: exit {clean.returncode}, "
                               f"{len(reference)} drift rows, {clean.stderr[-300:]}")  # fmt: skip
        return result
    for i, (case, (event, delay)) in enumerate(zip(result.cases, moments, strict=True)):
        db = root / f"kill{i}" / "w.duckdb"
        db.parent.mkdir()
        kill_at(models, db, event, delay)
        again = subprocess.run(ingest_command(models, db), capture_output=True, text=True)
        problems = []
        if again.returncode != 0 or again.stderr.strip():
            problems.append(f"re-run after a kill at {case.name}: exit {again.returncode} "
                            f"{again.stderr[-300:]}")  # fmt: skip
        else:
            rows = drift_rows(db)
            if rows != reference:
                problems.append(f"after a kill at {case.name}: {len(rows - reference)} drift "
                                f"rows wrong, {len(reference - rows)} missing")  # fmt: skip
        result.problems += problems
        result.outcome[case.name] = "error:unsafe" if problems else "ok"
        shutil.rmtree(db.parent, ignore_errors=True)
    return result
