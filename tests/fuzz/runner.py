"""Run fuzz cases through the real CLI and check every promise for every case.

Cases are ingested in batches: each batch is one folder holding its cases' folders plus two
good files, ingested by `wpipe ingest` in a subprocess whose process tree's RSS is sampled.
For every batch: exit code 0/1 as the failures say, no traceback, one `failed:` line per
ingest_errors row naming its file, no `internal-error`, the good files ingested, no orphaned
lake partitions, the database still opens, wall time and peak RSS within bounds; for every
case: its expected outcome (`error` with its code, or `ok`), and in any case a clean one.

    python -m tests.fuzz.runner [--full] [--damage N] [--batch N]   (make fuzz: --full)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psutil

from tests.conftest import MODELS
from tests.fuzz.cases import Case, all_cases

GOOD = ("k2_uncompiled.h5", "k3_conv2d.keras")
FILE_TIMEOUT = 120  # seconds per file in the fuzz runs: a hang shows as a `timeout` row
MAX_WALL = 900.0  # one batch
MAX_RSS = 3 << 30  # the whole process tree of one ingest
HEX_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass
class BatchResult:
    cases: list[Case]
    outcome: dict[str, str] = field(default_factory=dict)  # case name -> "error:<code>" | "ok"
    problems: list[str] = field(default_factory=list)
    wall: float = 0.0
    peak_rss: int = 0


def run_batch(cases: list[Case], root: Path, jobs: int = 2) -> BatchResult:
    result = BatchResult(cases)
    models = root / "models"
    models.mkdir(parents=True)
    for name in GOOD:
        shutil.copy2(MODELS / name, models / f"good_{name}")
    folders = {}
    for i, case in enumerate(cases):
        folder = models / f"case{i:03d}"
        folder.mkdir()
        case.make(folder)
        folders[case.name] = folder
    db, lake = root / "out" / "w.duckdb", root / "out" / "w.lake"
    db.parent.mkdir()
    command = [sys.executable, "-m", "wpipe.cli", "ingest", str(models), "--db", str(db),
               "-j", str(jobs), "--file-timeout", str(FILE_TIMEOUT), "--no-drift"]  # fmt: skip
    stdout, stderr, code = _watched(command, result)
    _check_run(result, stdout, stderr, code, db, lake, models, folders)
    return result


def _watched(command: list[str], result: BatchResult) -> tuple[str, str, int]:
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            result.peak_rss = max(result.peak_rss, _tree_rss(parent))
            if time.monotonic() - started > MAX_WALL:
                for p in [*parent.children(recursive=True), parent]:
                    p.kill()
                result.problems.append(f"hang: still running after {MAX_WALL:.0f} s")
                proc.wait()
                break
            time.sleep(0.05)
        result.wall = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        decode = lambda b: b.read().decode("utf-8", "backslashreplace")  # noqa: E731
        return decode(out), decode(err), proc.returncode


def _tree_rss(parent: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        for p in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                total += p.memory_info().rss
    return total


def _check_run(result, stdout, stderr, code, db, lake, models, folders) -> None:
    problems = result.problems
    if "Traceback" in stdout + stderr:
        problems.append("traceback printed")
    if result.peak_rss > MAX_RSS:
        problems.append(f"blowup: peak RSS {result.peak_rss / 2**30:.1f} GiB")
    try:
        with duckdb.connect(str(db), read_only=True) as con:
            errors = con.execute("SELECT path, error, message FROM ingest_errors").fetchall()
            paths = {p for (p,) in con.execute("SELECT path FROM models").fetchall()}
            ids = {i for (i,) in con.execute("SELECT model_id FROM models").fetchall()}
    except duckdb.Error as exc:
        problems.append(f"database unreadable: {exc}")
        return
    failed_lines = [line for line in stderr.splitlines() if line.startswith("failed:")]
    if code not in (0, 1) or (code == 1) != bool(errors):
        problems.append(f"exit code {code} with {len(errors)} ingest_errors rows: {stderr[-300:]}")
    if len(failed_lines) != len(errors):
        problems.append(f"{len(failed_lines)} failed lines for {len(errors)} ingest_errors rows")
    for path, error, message in errors:
        if error == "internal-error":
            problems.append(f"internal-error: {message}")
        if path not in message or not any(path in line for line in failed_lines):
            problems.append(f"no line naming {path}")
    for name in GOOD:
        if str(models / f"good_{name}") not in paths:
            problems.append(f"good file {name} not ingested")
    if lake.exists():
        leftovers = list((lake / ".tmp").glob("*")) if (lake / ".tmp").exists() else []
        orphans = [p.name for p in lake.iterdir() if HEX_ID.match(p.name) and p.name not in ids]
        if leftovers or orphans:
            problems.append(f"orphaned lake files: {leftovers[:3]} {orphans[:3]}")
    by_folder = _outcomes(folders, errors, paths)
    for case in result.cases:
        outcome = by_folder[case.name]
        result.outcome[case.name] = outcome
        if case.expect == "error" and not outcome.startswith("error"):
            problems.append(f"{case.family}/{case.name}: expected an error, got {outcome}")
        if case.expect == "error" and case.code and outcome != f"error:{case.code}":
            problems.append(f"{case.family}/{case.name}: expected {case.code}, got {outcome}")
        if case.expect == "ok" and outcome != "ok":
            problems.append(f"{case.family}/{case.name}: expected ok, got {outcome}")


def _outcomes(folders: dict[str, Path], errors, paths) -> dict[str, str]:
    """Per case: the first error among its files, else ok (none of its files is a model: ok)."""
    out = {}
    for name, folder in folders.items():
        prefix = f"{folder}/"
        codes = sorted(e for p, e, _ in errors if p.startswith(prefix))
        out[name] = f"error:{codes[0]}" if codes else "ok"
    return out


def run(
    full: bool,
    damage: int | None,
    batch: int,
    jobs: int = 2,
    per_family: int | None = None,
    family: str | None = None,
) -> list[BatchResult]:
    cases = [c for c in all_cases(full, damage, per_family) if family in (None, c.family)]
    results = []
    with tempfile.TemporaryDirectory(prefix="wpipe-fuzz-") as tmp:
        for start in range(0, len(cases), batch):
            chunk = cases[start : start + batch]
            results.append(run_batch(chunk, Path(tmp) / f"batch{start:04d}", jobs))
            shutil.rmtree(Path(tmp) / f"batch{start:04d}", ignore_errors=True)
    return results


KILL_SOURCES = ("k2_conv2d.h5", "k3_lstm.h5", "k3_conv2d.keras", "k2_mha.weights.h5",
                "k2_lstm.keras", "k3_mha.h5", "k2_nested.h5", "k3_bidi_td.keras")  # fmt: skip


def _zoo(root: Path, copies: int) -> Path:
    zoo = root / "zoo"
    zoo.mkdir(parents=True)
    for i in range(copies):
        for name in KILL_SOURCES:
            shutil.copy2(MODELS / name, zoo / f"c{i}_{name}")
    return zoo


def _ingest_command(zoo: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "wpipe.cli", "ingest", str(zoo), "--db", str(db), "-j", "2"]


def run_kills(points: int, root: Path) -> BatchResult:
    """kill -9 an ingest (and its workers) at `points` moments, then ingest again: the
    database opens, every model is there exactly once, nothing is left in the lake."""
    result = BatchResult([Case("kill -9", f"kill at point {i}", lambda d: None)
                          for i in range(points)])  # fmt: skip
    for i, case in enumerate(result.cases):
        where = root / f"kill{i}"
        zoo = _zoo(where, 2)
        db = where / "w.duckdb"
        proc = subprocess.Popen(_ingest_command(zoo, db), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        time.sleep(0.5 + 8.0 * i / max(1, points - 1))
        os.killpg(proc.pid, 9)
        proc.wait()
        again = subprocess.run(_ingest_command(zoo, db), capture_output=True, text=True)
        problems = []
        if again.returncode != 0 or "Traceback" in again.stderr:
            problems.append(f"rerun after kill {i}: exit {again.returncode} {again.stderr[-300:]}")
        else:
            with duckdb.connect(str(db), read_only=True) as con:
                n, distinct = con.execute(
                    "SELECT count(*), count(DISTINCT path) FROM models"
                ).fetchone()
                ids = {m for (m,) in con.execute("SELECT model_id FROM models").fetchall()}
            if n != distinct or n != 2 * len(KILL_SOURCES):
                problems.append(f"after kill {i}: {n} model rows, {distinct} paths")
            lake = where / "w.lake"
            orphans = [p.name for p in lake.iterdir() if HEX_ID.match(p.name) and p.name not in ids]
            if orphans or list((lake / ".tmp").glob("*")):
                problems.append(f"after kill {i}: orphaned lake files {orphans[:3]}")
        result.problems += problems
        result.outcome[case.name] = "error:unsafe" if problems else "ok"
        shutil.rmtree(where, ignore_errors=True)
    return result


def run_concurrency(root: Path) -> BatchResult:
    """A second ingest during an ingest is refused with one line, before it changes anything;
    a read command during an ingest waits and then reads."""
    cases = [Case("concurrency", "second writer", lambda d: None),
             Case("concurrency", "reader during an ingest", lambda d: None)]  # fmt: skip
    result = BatchResult(cases)
    zoo = _zoo(root / "conc", 4)
    db = zoo / "w.duckdb"  # the database inside the folder being ingested
    first = subprocess.Popen(_ingest_command(zoo, db), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(2.5)
    second = subprocess.run(_ingest_command(zoo, db), capture_output=True, text=True)
    env = {**os.environ, "WPIPE_WAIT": "300"}
    reader = subprocess.run([sys.executable, "-m", "wpipe.cli", "models", "--db", str(db),
                             "-f", "csv"], capture_output=True, text=True, env=env)  # fmt: skip
    first.communicate()
    refused = second.returncode == 2 and "cannot open for writing" in second.stderr
    result.outcome[cases[0].name] = "error:refused" if refused else "ok"
    if not refused or second.stderr.count("\n") != 1:
        result.problems.append(f"second writer: exit {second.returncode} {second.stderr[-300:]}")
    result.outcome[cases[1].name] = "ok" if reader.returncode == 0 else "error:reader"
    if reader.returncode != 0 or len(reader.stdout.splitlines()) != 1 + 4 * len(KILL_SOURCES):
        result.problems.append(f"reader: exit {reader.returncode} {reader.stderr[-300:]}")
    if first.returncode != 0:
        result.problems.append(f"first ingest: exit {first.returncode}")
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SELECT count(*) FROM weights").fetchone()
    return result


def table(results: list[BatchResult]) -> str:
    counts: dict[str, Counter] = {}
    for r in results:
        for case in r.cases:
            c = counts.setdefault(case.family, Counter())
            c["cases"] += 1
            c["ok" if r.outcome.get(case.name) == "ok" else "clean errors"] += 1
    lines = ["| family | cases | clean errors | ok |", "|---|---|---|---|"]
    for family, c in counts.items():
        lines.append(f"| {family} | {c['cases']} | {c['clean errors']} | {c['ok']} |")
    total = sum((c for c in counts.values()), Counter())
    lines.append(f"| **all** | {total['cases']} | {total['clean errors']} | {total['ok']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every case (make fuzz)")
    parser.add_argument("--damage", type=int, default=None, help="random-damage cases")
    parser.add_argument("--batch", type=int, default=12, help="cases per ingest run")
    parser.add_argument("--family", default=None, help="only this family's cases")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 points (with --full)")
    args = parser.parse_args()
    os.environ.setdefault("COLUMNS", "200")
    started = time.monotonic()
    results = run(args.full, args.damage, args.batch, family=args.family)
    if args.full and args.family is None:
        with tempfile.TemporaryDirectory(prefix="wpipe-fuzz-") as tmp:
            results.append(run_concurrency(Path(tmp)))
            results.append(run_kills(args.kills, Path(tmp)))
    print(table(results))
    problems = [p for r in results for p in r.problems]
    worst_rss = max(r.peak_rss for r in results) / 2**30
    worst_wall = max(r.wall for r in results)
    print(
        f"\n{len(results)} ingest runs in {time.monotonic() - started:.0f} s; slowest run "
        f"{worst_wall:.1f} s, largest peak RSS {worst_rss:.2f} GiB; {len(problems)} problems"
    )
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
