"""`make bench`, start-up case: how long a command takes from the shell, against the bare
interpreter (`python -c pass`) measured in the same run.

Cases (targets from issue #28, as seconds added to the interpreter's start-up):
  --version, --help         +0.15 s and below 40 MB peak RSS;
  models, query             on a 10,000-model database, +0.6 s;
  ingest one                one small file (88 KB demo CNN) into a new database, +1.5 s;
  re-ingest (no-op)         the same file again, nothing changed, +0.8 s.
Every run is a fresh process, started as a user starts it (the `wpipe` script of the venv);
the cases take turns, REPEATS rounds, and each case's median is reported with its peak RSS
(the largest of the process and the workers it waited for) and its CPU seconds, which say how
much of the wall time was the machine's load (CPU counts the pool's server and workers too:
this process is their subreaper). The load average is printed before and after.
WPIPE_BENCH_AGAINST=<folder holding another checkout's `wpipe` package> measures that one in
the same rounds (before/after a change, under the same load).

The 10,000-model database is made once (cached in bench/_data/startup10k.duckdb): the demo
CNN ingested with `--values none` (weight_values would be 20,000 rows a model), then its rows
copied under 10,000 model ids and paths in one lake commit per table, loaded by the store's
own `load_batch` — a database as an ingest makes it, with fewer data files.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "_data"
SEED_MODEL = ROOT / "examples" / "models" / "cnn_lr1e-3" / "e01.h5"
BIG_DB = DATA / "startup10k.duckdb"
BIG_MODELS = 10_000
REPEATS = int(os.environ.get("WPIPE_BENCH_REPEATS", "5"))
WPIPE = str(Path(sys.executable).parent / "wpipe")

# case: (seconds over the interpreter, peak RSS in MB or None)
TARGETS = {
    "--version": (0.15, 40),
    "--help": (0.15, 40),
    "models (10k)": (0.6, None),
    "query (10k)": (0.6, None),
    "ingest one file": (1.5, None),
    "no-op re-ingest": (0.8, None),
}


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB) of one command, its output discarded. The
    CPU and RSS include the processes it started (a worker pool's server and workers, which
    are reparented here when it ends: this process is their subreaper)."""
    started = time.perf_counter()
    child = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=env
    )
    errors = child.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.stderr.close()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {child.returncode}\n{errors}")
    cpu, rss = usage.ru_utime + usage.ru_stime, usage.ru_maxrss
    while True:  # what the command left running, once it has ended (a pool's server)
        try:
            _, _, left = os.wait4(-1, 0)
        except ChildProcessError:
            break
        cpu, rss = cpu + left.ru_utime + left.ru_stime, max(rss, left.ru_maxrss)
    return wall, cpu, rss / 1024


def _become_subreaper() -> None:
    """Processes a command leaves behind are reparented to this one (Linux; elsewhere their
    CPU is not counted)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap() -> None:
    """Wait for every process left to this one (Linux: a subreaper's orphans)."""
    while True:
        try:
            os.wait4(-1, 0)
        except ChildProcessError:
            return


def build_big_db(n: int = BIG_MODELS) -> None:
    """The cached n-model database (see the module's docstring), made where it stays (its
    served views name its lake's files); a marker file says it is complete."""
    done = BIG_DB.with_suffix(".complete")
    if done.exists():
        return
    DATA.mkdir(parents=True, exist_ok=True)
    beside = (".lake", ".duckdb.wal", ".duckdb.lock")
    for path in (BIG_DB, *(BIG_DB.with_suffix(suffix) for suffix in beside)):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    subprocess.run([WPIPE, "ingest", str(SEED_MODEL), "--db", str(BIG_DB), "--values", "none",
                    "-j", "1", "-q"], check=True, cwd=ROOT)  # fmt: skip
    subprocess.run([sys.executable, __file__, "--replicate", str(BIG_DB), str(n)], check=True)
    done.touch()


def replicate(db_path: str, n: int) -> None:
    """Copy the one model of `db_path` under n model ids, one lake commit per table."""
    import numpy as np
    from wpipe import store
    from wpipe.analyse.tables import file_stem, model_id_for
    from wpipe.core import schema
    from wpipe.store import remote

    database = store.Database(db_path)
    lake = remote.open_lake(database.lake_beside())
    (seed,) = [row[0] for row in database.con.execute("SELECT model_id FROM models").fetchall()]
    paths = [f"/bench/startup/run{k // 10:04d}/e{k % 10 + 1:02d}.h5" for k in range(n)]
    ids = [model_id_for(p) for p in paths]
    files, versions = {}, {}
    for table in (*schema.MODEL_TABLES[1:], schema.MODELS):
        rows = lake.rows_of(table.name, {seed})
        if not rows.num_rows:
            continue
        many = rows.take(np.tile(np.arange(rows.num_rows), n))
        many = _set(many, "model_id", np.repeat(ids, rows.num_rows))
        if table is schema.MODELS:
            many = _set(_set(many, "path", paths), "name", [file_stem(p) for p in paths])
        added = store.write_data_file(lake.location, table.name, many)
        versions[table.name] = lake.replace(table.name, {seed}, [added])
        files[table.name] = [added.name]
    database.load_batch(lake, files, ids, versions, [seed])
    database.refresh_names()
    database.close()
    print(f"{db_path}: {n} models", file=sys.stderr)


def _set(rows, name: str, values) -> object:
    import pyarrow as pa

    i = rows.schema.get_field_index(name)
    return rows.set_column(i, name, pa.array(list(values), rows.schema.field(i).type))


def cases(work: Path) -> dict[str, tuple[list[str], Callable[[], None] | None]]:
    """case -> (argv, what to do before each run); `work`: this variant's own databases."""
    one = work / "one.duckdb"
    ingest_one = [WPIPE, "ingest", str(SEED_MODEL), "--db", str(one), "-q"]

    def fresh() -> None:
        shutil.rmtree(one.with_suffix(".lake"), ignore_errors=True)
        one.unlink(missing_ok=True)

    def ingested() -> None:
        if not one.exists():
            run(ingest_one, _ENV[work])

    big = str(BIG_DB)
    query = [WPIPE, "query", "SELECT count(*), sum(n_params) FROM models", "--db", big]
    return {
        "python -c pass": ([sys.executable, "-c", "pass"], None),
        "--version": ([WPIPE, "--version"], None),
        "--help": ([WPIPE, "--help"], None),
        "models (10k)": ([WPIPE, "models", "--db", big], None),
        "query (10k)": (query, None),
        "ingest one file": (ingest_one, fresh),
        "no-op re-ingest": (ingest_one, ingested),
    }


_ENV: dict[Path, dict[str, str] | None] = {}  # a variant's environment, by its work folder


def variants() -> dict[str, Path]:
    """label -> work folder: this checkout, and with WPIPE_BENCH_AGAINST (a folder holding
    another checkout's `wpipe` package, e.g. an older commit's pipeline/) that one too, its
    runs taking turns with these (the same load for both)."""
    found = {"this checkout": DATA / "startup"}
    _ENV[found["this checkout"]] = None
    other = os.environ.get("WPIPE_BENCH_AGAINST")
    if other:
        work = DATA / "startup_against"
        found[f"against {other}"] = work
        _ENV[work] = {**os.environ, "PYTHONPATH": other}
    return found


def main() -> None:
    _become_subreaper()
    build_big_db()
    _reap()  # what building it left running (its ingest's pool server), not the first case's
    todo = {}
    for label, work in variants().items():
        work.mkdir(parents=True, exist_ok=True)
        for name, (argv, before) in cases(work).items():
            todo[label, name] = (argv, before, _ENV[work])
    times: dict[tuple[str, str], list[tuple[float, float, float]]] = {key: [] for key in todo}
    load_before = os.getloadavg()
    for _ in range(REPEATS):
        for key, (argv, before, env) in todo.items():
            if before is not None:
                before()
            times[key].append(run(argv, env))
    load_after = os.getloadavg()
    print(f"\nstart-up: median of {REPEATS} runs, load average {_load(load_before)} before, "
          f"{_load(load_after)} after; {os.cpu_count()} cores")  # fmt: skip
    for label in variants():
        _table(label, {name: runs for (of, name), runs in times.items() if of == label})


def _table(label: str, times: dict[str, list[tuple[float, float, float]]]) -> None:
    base = statistics.median(t[0] for t in times["python -c pass"])
    base_cpu = statistics.median(t[1] for t in times["python -c pass"])
    print(f"\n{label}")
    print(f"{'case':<18} {'median s':>9} {'- pass s':>9} {'target':>8} {'CPU s':>7} "
          f"{'- pass':>7} {'RSS MB':>7} {'RSS max':>8}  result")  # fmt: skip
    for name, runs in times.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        target, rss_target = TARGETS.get(name, (None, None))
        verdict = ""
        if target is not None:
            ok = wall - base <= target and (rss_target is None or rss <= rss_target)
            verdict = "pass" if ok else "FAIL"
        print(f"{name:<18} {wall:>9.3f} {wall - base:>+9.3f} "
              f"{'+' + format(target, '.2f') if target else '':>8} {cpu:>7.2f} "
              f"{cpu - base_cpu:>+7.2f} {rss:>7.0f} {rss_target or '':>8}  {verdict}")  # fmt: skip


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--replicate"]:
        replicate(sys.argv[2], int(sys.argv[3]))
    else:
        main()
