"""Late kills: `kill -9` an ingest of checkpoint series at many moments, the late ones in the
last batch and in the final store, then ingest again; the re-run's drift table must equal an
uninterrupted run's.

The series are the demo's (three of five checkpoints, two single models). Their even
checkpoints arrive later, as a training run writes them: a first ingest sees e01, e03 and e05
(pairs e01→e03, e03→e05); the ingest that is killed reads e02 and e04, whose pairs with the
files before them its workers compute, and whose pairs with the files after them (e02→e03,
e04→e05) and the pairs they end (e01→e03, e03→e05) the end of the run computes and removes.
Every run starts from the same copy of the first ingest's database and lake, in place.

A kill's moment is an event plus a delay: `start` (the process began) or `commit` (the lake's
`models` log got the batch's commit: what follows is the load, the drift store and the run's
last steps). The uninterrupted run measures both stretches, and the points are spread over
them.
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


def commits(lake: Path) -> int:
    log = lake / "models" / "_delta_log"
    return sum(p.suffix == ".json" for p in log.iterdir()) if log.is_dir() else 0


def timed_run(models: Path, db: Path) -> tuple[float, float, subprocess.CompletedProcess]:
    """An uninterrupted ingest: (seconds to the models commit, seconds after it, the run)."""
    lake = db.with_suffix(".lake")
    before = commits(lake)
    started = time.monotonic()
    proc = subprocess.Popen(ingest_command(models, db), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    at_commit = None
    while proc.poll() is None:
        if at_commit is None and commits(lake) > before:
            at_commit = time.monotonic()
        time.sleep(0.005)
    out, err = proc.communicate()
    ended = time.monotonic()
    at_commit = at_commit or ended
    run = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return at_commit - started, ended - at_commit, run


def kill_points(before: float, after: float, n: int, early: bool) -> list[tuple[str, float]]:
    """n moments: with `early`, a third of them before the commit (from the start); the rest
    after it, over the load, the drift store and the end of the run."""
    first = max(1, n // 3) if early else 0
    late = n - first
    points = [("start", before * (i + 1) / (first + 1)) for i in range(first)]
    points += [("commit", after * (i + 0.5) / late) for i in range(late)]
    return points


def kill_at(models: Path, db: Path, event: str, delay: float) -> None:
    proc = subprocess.Popen(ingest_command(models, db), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    lake = db.with_suffix(".lake")
    before = commits(lake)
    while event == "commit" and proc.poll() is None and commits(lake) == before:
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, 9)  # the driver and its workers
    proc.wait()


LATER = ("e02.h5", "e04.h5")  # the checkpoints written after the first ingest


def first_ingest(root: Path) -> tuple[Path, Path, Path]:
    """(models folder, work folder, snapshot of the work folder after the first ingest)."""
    models, later, work = root / "series", root / "later", root / "work"
    shutil.copytree(EXAMPLES, models)
    for checkpoint in sorted(models.glob("*/e0*.h5")):
        if checkpoint.name in LATER:
            (later / checkpoint.parent.name).mkdir(parents=True, exist_ok=True)
            checkpoint.rename(later / checkpoint.parent.name / checkpoint.name)
    work.mkdir()
    subprocess.run(ingest_command(models, work / "w.duckdb"), check=True, capture_output=True)
    shutil.copytree(work, root / "snapshot")
    shutil.copytree(later, models, dirs_exist_ok=True)
    return models, work, root / "snapshot"


def restore(work: Path, snapshot: Path) -> None:
    shutil.rmtree(work)
    shutil.copytree(snapshot, work)


def run_late_kills(points: int, root: Path, early: bool = True):
    """Kill at `points` moments (`early`: some before the batch's commit too); each re-run's
    drift must be the uninterrupted run's."""
    from tests.fuzz.runner import BatchResult, stray_lines

    models, work, snapshot = first_ingest(root)
    db = work / "w.duckdb"
    before, after, clean = timed_run(models, db)
    reference = drift_rows(db)
    moments = kill_points(before, after, points, early)
    result = BatchResult([Case("late kills", f"{e}+{d:.2f}s", lambda d: None)
                          for e, d in moments])  # fmt: skip
    if clean.returncode != 0 or stray_lines(clean.stderr) or len(reference) == 0:
        result.problems.append(f"uninterrupted run: exit {clean.returncode}, "
                               f"{len(reference)} drift rows, {clean.stderr[-300:]}")  # fmt: skip
        return result
    for case, (event, delay) in zip(result.cases, moments, strict=True):
        restore(work, snapshot)
        kill_at(models, db, event, delay)
        again = subprocess.run(ingest_command(models, db), capture_output=True, text=True)
        problems = []
        if again.returncode != 0 or stray_lines(again.stderr):
            problems.append(f"re-run after a kill at {case.name}: exit {again.returncode} "
                            f"{again.stderr[-300:]}")  # fmt: skip
        else:
            rows = drift_rows(db)
            if rows != reference:
                problems.append(f"after a kill at {case.name}: {len(rows - reference)} drift "
                                f"rows wrong, {len(reference - rows)} missing")  # fmt: skip
        result.problems += problems
        result.outcome[case.name] = "error:unsafe" if problems else "ok"
    return result
