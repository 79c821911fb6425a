"""Run fuzz cases through the real CLI and check every promise for every case.

Cases are ingested in batches: each batch is one folder holding its cases' folders plus two
good files, ingested by `wpipe ingest` in a subprocess whose process tree's RSS is sampled.
For every batch: exit code 0/1 as the failures say, no traceback, one `failed:` line per
ingest_errors row naming its file, no `internal-error`, the good files ingested, no orphaned
lake partitions, the database still opens, no file in the models folder (nor the user's file
beside the database) deleted or changed, wall time and peak RSS within bounds; for every
case: its expected outcome (`error` with its code, or `ok`, with as many models as it says),
and in any case a clean one. With --full, the special runs too: kill -9, concurrency, a
full disk, and the user's files around the lake (lake_cases.py).

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
from wpipe.core.textsafe import display
from wpipe.store import Lake
from wpipe.store.lake import TABLES

from tests.conftest import MODELS
from tests.fuzz import lake_cases
from tests.fuzz.cases import Case, all_cases
from tests.fuzz.deep import remove_tree
from tests.fuzz.late_kills import run_late_kills
from tests.fuzz.pool_races import run_pool_races

GOOD = ("k2_uncompiled.h5", "k3_conv2d.keras")
# No --file-timeout: the default limit, scaled with each file's size, stops a hang (a
# `timeout` row) in seconds, as it does for a user
MAX_WALL = 900.0  # one batch
MAX_RSS = 3 << 30  # the whole process tree of one ingest


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
    (db.parent / "notes.txt").write_text("the user's file beside the database\n")
    command = [sys.executable, "-m", "wpipe.cli", "ingest", str(models), "--db", str(db),
               "-j", str(jobs), "--no-drift"]  # fmt: skip
    before = lake_cases.snapshot(models) | lake_cases.stamps([db.parent / "notes.txt"])
    stdout, stderr, code = _watched(command, result)
    after = lake_cases.snapshot(models) | lake_cases.stamps([db.parent / "notes.txt"])
    result.problems += [f"damage: {c}" for c in lake_cases.changes(before, after)]
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


# What `wpipe ingest` may print on stderr: a line per failed file, warnings, its summary.
EXPECTED_STDERR = re.compile(r"^(failed: |failed earlier, unchanged: |warning: |"
                             r"\d[\d,]* files: \d)")  # fmt: skip


def stray_lines(stderr: str) -> list[str]:
    """stderr lines no wpipe message explains (a worker's traceback, a numpy warning)."""
    return [line for line in stderr.splitlines() if line and not EXPECTED_STDERR.match(line)]


def _check_run(result, stdout, stderr, code, db, lake, models, folders) -> None:
    problems = result.problems
    if "Traceback" in stdout + stderr:
        problems.append("traceback printed")
    elif stray_lines(stderr):
        problems.append(f"stray stderr line: {stray_lines(stderr)[0][:200]}")
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
    orphans = orphaned(lake, ids)
    if orphans:
        problems.append(f"orphaned lake files: {orphans[:3]}")
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
        prefix = display(f"{folders[case.name]}/")
        if case.expect == "ok" and not any(p.startswith(prefix) for p in paths):
            problems.append(f"{case.family}/{case.name}: expected ok, but nothing was ingested")
        found = sum(p.startswith(prefix) for p in paths)
        if case.models is not None and found != case.models:
            problems.append(f"{case.family}/{case.name}: {found} models, not {case.models}")


def orphaned(lake: Path, ids: set[str]) -> list[str]:
    """Data files of the lake that its current version does not reference, and rows of
    models the database does not hold (a partition without its models row)."""
    if not (lake / "models" / "_delta_log").is_dir():
        return []
    handle = Lake.open(str(lake))
    out = [f"{t}/{f}" for t in TABLES for f in handle.unreferenced(t)]
    for table in TABLES:
        rows = handle.dataset(table).to_table(columns=["model_id"]).column("model_id")
        strays = set(rows.unique().to_pylist()) - ids
        out += [f"{table}: rows of {m}, which the database does not hold" for m in sorted(strays)]
    return out


def _outcomes(folders: dict[str, Path], errors, paths) -> dict[str, str]:
    """Per case: the first error among its files, else ok (none of its files is a model: ok)."""
    out = {}
    for name, folder in folders.items():
        prefix = display(f"{folder}/")  # paths as stored (textsafe)
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
    # batches of one family each (a hang or a blowup of a batch is its family's)
    chunks = []
    for name in dict.fromkeys(c.family for c in cases):
        mine = [c for c in cases if c.family == name]
        chunks += [mine[i : i + batch] for i in range(0, len(mine), batch)]
    if not full:  # the quick form: one ingest for every family's cases
        chunks = [cases]
    results = []
    with tempfile.TemporaryDirectory(prefix="wpipe-fuzz-") as tmp:
        for i, chunk in enumerate(chunks):
            results.append(run_batch(chunk, Path(tmp) / f"batch{i:04d}", jobs))
            remove_tree(Path(tmp) / f"batch{i:04d}")  # its deep folders: no recursion
    return results


KILL_SOURCES = ("k2_conv2d.h5", "k3_lstm.h5", "k3_conv2d.keras", "k2_mha.weights.h5",
                "k2_lstm.keras", "k3_mha.h5", "k2_nested.h5", "k3_bidi_td.keras")  # fmt: skip
WPIPE = [sys.executable, "-m", "wpipe.cli"]


def _zoo(root: Path, copies: int) -> Path:
    zoo = root / "zoo"
    zoo.mkdir(parents=True)
    for i in range(copies):
        for name in KILL_SOURCES:
            shutil.copy2(MODELS / name, zoo / f"c{i}_{name}")
    return zoo


def _ingest_command(zoo: Path, db: Path) -> list[str]:
    return [*WPIPE, "ingest", str(zoo), "--db", str(db), "-j", "2"]


def _models_and_orphans(db: Path, lake: Path) -> tuple[int, int, list[str]]:
    with duckdb.connect(str(db), read_only=True) as con:
        n, distinct = con.execute("SELECT count(*), count(DISTINCT path) FROM models").fetchone()
        ids = {m for (m,) in con.execute("SELECT model_id FROM models").fetchall()}
    return n, distinct, orphaned(lake, ids)


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
            n, distinct, orphans = _models_and_orphans(db, where / "w.lake")
            if n != distinct or n != 2 * len(KILL_SOURCES):
                problems.append(f"after kill {i}: {n} model rows, {distinct} paths")
            if orphans:
                problems.append(f"after kill {i}: orphaned lake files {orphans[:3]}")
        result.problems += problems
        result.outcome[case.name] = "error:unsafe" if problems else "ok"
        shutil.rmtree(where, ignore_errors=True)
    return result


READERS = {  # read commands run from other processes during an ingest
    "models": ["models", "-f", "csv"],
    "query": ["query", "SELECT count(*) AS n FROM models", "-f", "csv"],
    "health": ["health", "-f", "csv"],
}


def run_concurrency(root: Path) -> BatchResult:
    """During an ingest (its database inside the folder it ingests): a second ingest is
    refused with one line naming the first, before it changes anything; read commands wait
    (WPIPE_WAIT) with a message and then read the finished ingest's models."""
    cases = [Case("concurrency", "second writer", lambda d: None)]
    cases += [Case("concurrency", f"{name} during an ingest", lambda d: None) for name in READERS]
    result = BatchResult(cases)
    zoo = _zoo(root / "conc", 6)
    db = zoo / "w.duckdb"
    first = subprocess.Popen(_ingest_command(zoo, db), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock = Path(f"{db}.lock")
    while first.poll() is None and not (lock.exists() and lock.read_text()):
        time.sleep(0.05)  # the first holds its writer lock
    time.sleep(1.0)  # and is reading files now
    running = first.poll() is None
    second = subprocess.run(_ingest_command(zoo, db), capture_output=True, text=True)
    env = {**os.environ, "WPIPE_WAIT": "600"}
    readers = {name: subprocess.Popen([*WPIPE, *args, "--db", str(db)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, args in READERS.items()}  # fmt: skip
    outputs = {name: p.communicate(timeout=900) for name, p in readers.items()}
    first.communicate()
    if not running:
        result.problems.append("concurrency: the first ingest ended before the second started")
    lines = second.stderr.splitlines()
    refused = (second.returncode == 2 and len(lines) == 1 and "in use by wpipe ingest (PID"
               in lines[0] and f"PID {first.pid}," in lines[0])  # fmt: skip
    result.outcome[cases[0].name] = "error:refused" if refused else "ok"
    if not refused:
        result.problems.append(f"second writer: exit {second.returncode} {second.stderr[-300:]}")
    expected = 6 * len(KILL_SOURCES)
    for case, (name, (out, err)) in zip(cases[1:], outputs.items(), strict=True):
        ok = readers[name].returncode == 0 and "Traceback" not in err
        waited = err.startswith("waiting up to 600 s (WPIPE_WAIT)")
        if name == "models":
            ok = ok and len(out.splitlines()) == 1 + expected
        if name == "query":
            ok = ok and out.splitlines()[1:] == [str(expected)]
        result.outcome[case.name] = "ok" if ok and waited else "error:reader"
        if not (ok and waited):
            result.problems.append(f"{name} during an ingest: exit {readers[name].returncode} "
                                   f"{err[-300:]} {out[-200:]}")  # fmt: skip
    if first.returncode != 0:
        result.problems.append(f"first ingest: exit {first.returncode} {first.stderr[-300:]}")
    n, distinct, orphans = _models_and_orphans(db, zoo / "w.lake")
    if (n, distinct) != (expected, expected) or orphans:
        result.problems.append(f"after the concurrent runs: {n} models, orphans {orphans[:3]}")
    return result


DISK_FULL = r"""
set -u
mount -t tmpfs -o size=256m tmpfs "$DISK" || exit 99
ingest() { "$PYTHON" -m wpipe.cli ingest --db "$DISK/w.duckdb" -j 2 --no-drift "$@"; }
ingest "$FIRST" > "$OUT/first.log" 2>&1; echo $? > "$OUT/first.rc"
used=$(du -sk "$DISK" | cut -f1)
mount -o remount,size=$((used + SPARE_KB))k "$DISK"
ingest "$BIG" > "$OUT/full.log" 2>&1; echo $? > "$OUT/full.rc"
cp -a "$DISK" "$OUT/after_full"
mount -o remount,size=256m "$DISK"
ingest "$FIRST" "$BIG" > "$OUT/next.log" 2>&1; echo $? > "$OUT/next.rc"
cp -a "$DISK" "$OUT/after_next"
"""


def run_disk_full(root: Path, spares: tuple[int, ...] = (64, 256, 1024, 4096)) -> BatchResult:
    """A real full disk (a tmpfs in a private mount namespace, `unshare`): the run ends with
    one line, the database opens with the models loaded before, and once space is freed the
    next run ingests everything and leaves no orphaned lake file."""
    cases = [Case("disk full", f"{kb} KB left", lambda d: None) for kb in spares]
    result = BatchResult(cases)
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode:
        result.problems.append("disk full: cannot make a small disk here (unshare --mount)")
        return result
    for case, kb in zip(cases, spares, strict=True):
        where = root / f"full{kb}"
        first, big, out, disk = (where / n for n in ("first", "big", "out", "disk"))
        for d in (first, big, out, disk):
            d.mkdir(parents=True)
        shutil.copy2(MODELS / GOOD[0], first / "early.h5")
        for name in KILL_SOURCES:
            shutil.copy2(MODELS / name, big / name)
        env = {"DISK": disk, "FIRST": first, "BIG": big, "OUT": out, "SPARE_KB": kb,
               "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}  # fmt: skip
        run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                              DISK_FULL], env={k: str(v) for k, v in env.items()},
                             capture_output=True, text=True, timeout=1200)  # fmt: skip
        problems = _disk_full_problems(run, out, len(KILL_SOURCES))
        result.outcome[case.name] = (
            "unsafe" if problems else
            "error:disk-full" if (out / "full.rc").read_text().strip() == "1" else "ok"
        )  # fmt: skip
        result.problems += [f"disk full, {kb} KB left: {p}" for p in problems]
        shutil.rmtree(where, ignore_errors=True)
    return result


def _disk_full_problems(run, out: Path, n_big: int) -> list[str]:
    if run.returncode != 0:
        return [f"scenario failed: {run.stderr[-300:]}"]
    rc = {n: int((out / f"{n}.rc").read_text()) for n in ("first", "full", "next")}
    full = (out / "full.log").read_text()
    problems = []
    if "Traceback" in full + (out / "next.log").read_text():
        problems.append("traceback printed")
    if rc["first"] != 0 or rc["next"] != 0 or rc["full"] not in (0, 1):
        problems.append(f"exit codes {rc}: {full[-300:]}")
    errors = [line for line in full.splitlines() if line.startswith("error:")]
    if rc["full"] == 1 and (len(errors) != 1 or "the disk is full" not in errors[0]):
        problems.append(f"not one line saying the disk is full: {full[-300:]}")
    for state in ("after_full", "after_next"):
        try:
            n, _, orphans = _models_and_orphans(out / state / "w.duckdb", out / state / "w.lake")
        except duckdb.Error as exc:
            problems.append(f"{state}: database unreadable: {exc}")
            continue
        if n < 1:
            problems.append(f"{state}: the model loaded before is gone")
        if state == "after_next" and (n != 1 + n_big or orphans):
            problems.append(f"next run: {n} models, orphaned lake files {orphans[:3]}")
    return problems


def run_lake(root: Path) -> BatchResult:
    """The user's files around the lake (tests/fuzz/lake_cases.py), each scenario in a
    folder of its own: refused in one line, or never deleted nor changed."""
    result = BatchResult(lake_cases.lake_cases())
    started = time.monotonic()
    for i, case in enumerate(result.cases):
        problems = lake_cases.SCENARIOS[case.name](root / f"lake{i}")
        result.outcome[case.name] = "error:unsafe" if problems else "ok"
        result.problems += [f"{case.name}: {p}" for p in problems]
        shutil.rmtree(root / f"lake{i}", ignore_errors=True)
    result.wall = time.monotonic() - started
    return result


def run_races(rounds: int) -> BatchResult:
    """Worker pools started and stopped `rounds` times beside two busy processes: nothing
    on stderr (pool_races.py)."""
    result = BatchResult([Case("pool races", f"{rounds} starts and stops", lambda d: None)])
    stderr = run_pool_races(rounds, busy_processes=2, limit=MAX_WALL)
    if stderr:
        result.problems.append(f"stray stderr line: {stderr.splitlines()[0][:200]}")
    result.outcome[result.cases[0].name] = "error:stderr" if stderr else "ok"
    return result


def classify(problem: str) -> str:
    for kind, marks in (("damage", ("damage:", ": deleted ", ": changed ", ": added ")),
                        ("hangs", ("hang:", "timeout")), ("blowups", ("blowup:",)),
                        ("tracebacks", ("traceback", "Traceback", "stray stderr")),
                        ("orphans", ("orphaned",)), ("internal", ("internal-error",))):  # fmt: skip
        if any(m in problem for m in marks):
            return kind
    return "unclear"


KINDS = ("damage", "hangs", "blowups", "tracebacks", "orphans", "internal", "unclear")


def table(results: list[BatchResult]) -> str:
    counts: dict[str, Counter] = {}
    rss: dict[str, int] = {}
    for r in results:
        for case in r.cases:
            c = counts.setdefault(case.family, Counter())
            c["cases"] += 1
            c["ok" if r.outcome.get(case.name) == "ok" else "clean errors"] += 1
            c["of which timeout"] += r.outcome.get(case.name) == "error:timeout"
        family = r.cases[0].family if r.cases else "?"
        rss[family] = max(rss.get(family, 0), r.peak_rss)
        for problem in r.problems:
            counts.setdefault(family, Counter())[classify(problem)] += 1
    head = ["family", "cases", "clean errors", "of which timeout", "ok", *KINDS]
    lines = ["| " + " | ".join([*head, "peak RSS (GiB)"]) + " |", "|" + "---|" * (len(head) + 1)]
    total = sum(counts.values(), Counter())
    rss["**all**"] = max(rss.values(), default=0)
    for family, c in [*counts.items(), ("**all**", total)]:
        peak = f"{rss.get(family, 0) / 2**30:.2f}" if rss.get(family) else "-"
        lines.append(f"| {family} | " + " | ".join(str(c[k]) for k in head[1:]) + f" | {peak} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="every case (make fuzz)")
    parser.add_argument("--damage", type=int, default=None, help="random-damage cases")
    parser.add_argument("--batch", type=int, default=12, help="cases per ingest run")
    parser.add_argument("--family", default=None, help="only this family's cases (also: "
                        "concurrency, 'kill -9', 'disk full', lake, 'late kills', "
                        "'pool races')")  # fmt: skip
    parser.add_argument("--kills", type=int, default=20, help="kill -9 points (with --full)")
    parser.add_argument("--late-kills", type=int, default=12,
                        help="kill -9 points of the drift check (with --full)")  # fmt: skip
    parser.add_argument("--races", type=int, default=300, help="pool starts and stops")
    args = parser.parse_args()
    os.environ.setdefault("COLUMNS", "200")
    started = time.monotonic()
    special = {"concurrency": run_concurrency, "kill -9": lambda r: run_kills(args.kills, r),
               "disk full": run_disk_full, "lake": run_lake,
               "late kills": lambda r: run_late_kills(args.late_kills, r),
               "pool races": lambda r: run_races(args.races)}  # fmt: skip
    results = []
    if args.family not in special:
        results = run(args.full, args.damage, args.batch, family=args.family)
    if args.full or args.family in special:
        with tempfile.TemporaryDirectory(prefix="wpipe-fuzz-") as tmp:
            for name, runner in special.items():
                if args.family in (None, name):
                    results.append(runner(Path(tmp)))
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
