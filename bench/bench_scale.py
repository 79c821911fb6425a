"""`make bench`, scale cases: many small checkpoints in a tree of series, and real architectures.

tree - WPIPE_BENCH_TREE (default 10,000) small checkpoints, copies of a real Keras-saved demo
       CNN with fresh random weights, in folders of 10 epochs (series). Measured: ingest
       (defaults, -j 2) against the h5py read-every-dataset reference, and against loading
       each file with Keras and computing the same statistics with numpy (a sample of files,
       when the TensorFlow venv is there); a re-ingest with nothing changed; compaction; the
       model_summary and layer_compare views; the report; what is stored per model.
real - keras.applications models with random weights made by bench/make_real_models.py in
       the TensorFlow venv (skipped when absent): ingest time and peak RSS (-j 1, every stage
       in one process) against 3 x the largest tensor + 300 MB, what the default stores
       against the files' size, and what each table takes of it.
Every run is a fresh child process (its own peak RSS); ratios are against references
measured in the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "_data"
SEED_MODEL = ROOT / "examples" / "models" / "cnn_lr1e-3" / "e01.h5"
TREE_SIZE = int(os.environ.get("WPIPE_BENCH_TREE", "10000"))
EPOCHS = 10
TF_PYTHON = Path(os.environ.get("WPIPE_TF_PYTHON", "/work/venvs/tf/bin/python"))
KERAS_SAMPLE = 50  # files loaded with Keras for the Keras reference


def _make_series(args: tuple[Path, int]) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_ingest import fresh_copy

    folder, seed = args
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, EPOCHS + 1):
        target = folder / f"e{epoch:02d}.h5"
        if target.exists():
            continue
        tmp = target.with_suffix(".tmp")
        fresh_copy(SEED_MODEL, tmp, rng)
        tmp.rename(target)


def make_tree(root: Path, n: int) -> list[str]:
    """n checkpoints: run_<k>_lr<lr>/e01..e10.h5 under groups of 100 runs."""
    series = [
        (root / f"group{k // 100:03d}" / f"run{k:04d}_lr{(k % 5) + 1}e-3", k)
        for k in range(n // EPOCHS)
    ]
    with get_context("spawn").Pool(2) as pool:
        pool.map(_make_series, series, chunksize=8)
    return sorted(str(p) for p in root.rglob("e*.h5"))


def child_json(args: list[str], python: str = sys.executable) -> dict:
    out = subprocess.run(
        [python, *args], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def run_cli(args: list[str]) -> dict:
    """A wpipe command in a fresh process: seconds inside the command, and peak RSS."""
    return child_json([__file__, "--cli", *args])


def cli_child(args: list[str]) -> None:
    from bench_ingest import peak_rss_mb  # the same measurement as the ingest bench
    from wpipe.cli import app

    started = time.perf_counter()
    try:
        code = app(args, standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "code": code or 0, "peak_rss_mb": peak_rss_mb()}))


def views_child(db: str) -> None:
    """Best of 3 per view: the query with its result as Arrow (what a DataFrame user gets)
    and as Python rows (fetchall)."""
    import duckdb

    con = duckdb.connect(db, read_only=True)
    out = {}
    for view in ("model_summary", "layer_compare"):
        times: dict[str, float] = {}
        for how in ("arrow", "rows"):
            for _ in range(3):
                started = time.perf_counter()
                if how == "arrow":
                    rows = con.sql(f"SELECT * FROM {view}").to_arrow_table().num_rows
                else:
                    rows = len(con.execute(f"SELECT * FROM {view}").fetchall())
                elapsed = time.perf_counter() - started
                times[how] = min(times.get(how, elapsed), elapsed)
        out[view] = {"seconds": times["arrow"], "python_seconds": times["rows"], "rows": rows}
    print(json.dumps(out))


def disk_mb(*paths: Path) -> float:
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total / 1e6


def lake_files(lake: Path) -> int:
    from deltalake import DeltaTable

    return sum(len(DeltaTable(str(t)).file_uris()) for t in lake.iterdir() if t.is_dir()
               and (t / "_delta_log").is_dir())  # fmt: skip


def keras_reference(paths: list[str]) -> dict | None:
    """Load each file with Keras and compute the same per-tensor statistics with numpy."""
    if not TF_PYTHON.exists():
        return None
    script = ROOT / "bench" / "keras_reference.py"
    return child_json([str(script), *paths], python=str(TF_PYTHON))


def tree_case() -> None:
    from bench_ingest import measure

    root = DATA / f"tree{TREE_SIZE}"
    print(f"tree = {TREE_SIZE} small checkpoints in series of {EPOCHS} (generating if needed)")
    started = time.perf_counter()
    paths = make_tree(root, TREE_SIZE)
    print(f"  {len(paths)} files, {disk_mb(root):.0f} MB (made/checked in "
          f"{time.perf_counter() - started:.0f} s)")  # fmt: skip
    print(f"  load average at start {os.getloadavg()[0]:.1f} (2 cores shared: ratios, not seconds)")
    ref = measure("reference", [str(root)])
    db = DATA / "tree.duckdb"
    lake = db.with_suffix(".lake")
    for leftover in (db, lake):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(
            missing_ok=True)  # fmt: skip
    first = run_cli(["ingest", str(root), "--db", str(db), "-j", "2", "-q", "--file-timeout", "0"])
    again = run_cli(["ingest", str(root), "--db", str(db), "-j", "2", "-q"])
    files_before = lake_files(lake)
    compact = run_cli(["compact", "--db", str(db)])
    files_after = lake_files(lake)
    views = child_json([__file__, "--views", str(db)])
    report = run_cli(["report", "--db", str(db), "-o", str(DATA / "tree_report.html")])
    stored = disk_mb(db, lake)
    n = len(paths)
    ref_after = measure("reference", [str(root)])
    print(f"  reference (h5py, every dataset)  {ref['seconds']:8.2f} s before the ingest, "
          f"{ref_after['seconds']:.2f} s after; the ratio uses their mean")  # fmt: skip
    ref = {**ref, "seconds": (ref["seconds"] + ref_after["seconds"]) / 2}
    print(
        f"  ingest, defaults, -j 2           {first['seconds']:8.2f} s  "
        f"ratio {first['seconds'] / ref['seconds']:.1f}x  peak RSS {first['peak_rss_mb']:.0f} MB"
    )
    keras = keras_reference(paths[:KERAS_SAMPLE])
    if keras:
        per_file_keras = keras["seconds"] / keras["files"]
        per_file_ours = first["seconds"] / n
        print(
            f"  Keras load + numpy stats         {per_file_keras * 1e3:8.1f} ms/file "
            f"(sample of {keras['files']}); wpipe {per_file_ours * 1e3:.1f} ms/file: "
            f"{per_file_keras / per_file_ours:.1f}x faster"
        )
    else:
        print("  Keras reference skipped (no TensorFlow venv)")
    print(
        f"  no-op re-ingest                  {again['seconds']:8.2f} s  "
        f"= {again['seconds'] / n * 1000:.2f} s per 1,000 files (target <= 1)"
    )
    print(
        f"  lake files {files_before} -> {files_after} after compact "
        f"({files_after / n * 100:.2f} per 100 models, target <= 1); compact "
        f"{compact['seconds']:.1f} s"
    )
    for view, v in views.items():
        print(f"  view {view:<16} {v['seconds'] * 1e3:8.1f} ms as Arrow, "
              f"{v['python_seconds'] * 1e3:.1f} ms as Python rows ({v['rows']} rows; "
              "target < 200)")  # fmt: skip
    print(
        f"  report                           {report['seconds']:8.2f} s  peak RSS "
        f"{report['peak_rss_mb']:.0f} MB (targets <= 10 s, <= 1,000 MB)"
    )
    print(
        f"  stored (database + lake)         {stored:8.0f} MB for {disk_mb(root):.0f} MB "
        f"of files ({stored / disk_mb(root) * 100:.0f} %)"
    )
    print(f"  load average at end {os.getloadavg()[0]:.1f}")


def real_case() -> None:
    from bench_ingest import measure

    folder = DATA / "real"
    paths = sorted(str(p) for p in folder.glob("*") if p.suffix in (".h5", ".keras"))
    if not paths:
        print("real = skipped: run /work/venvs/tf/bin/python bench/make_real_models.py first")
        return
    print(f"real = {len(paths)} keras.applications models with random weights")
    lake_bytes = {}
    for path in paths:
        ref = measure("reference", [path])
        db = _fresh_store(DATA / "real.duckdb")
        # -j 1 without a time limit: every stage in one process, so its peak is the whole
        # ingest's (a pool's workers are not children the driver's rusage can see)
        ours = run_cli(["ingest", path, "--db", str(db), "-j", "1", "-q", "--file-timeout", "0"])
        lake_bytes[path] = sum(
            f.stat().st_size for f in db.with_suffix(".lake").glob("*/*.parquet")
        )
        budget = 3 * ref["largest_tensor"] / 2**20 + 300
        print(
            f"  {Path(path).name:<22} {Path(path).stat().st_size / 1e6:6.1f} MB  ingest "
            f"{ours['seconds']:6.2f} s (reference {ref['seconds']:.2f} s, "
            f"{ours['seconds'] / ref['seconds']:.1f}x)  peak RSS {ours['peak_rss_mb']:5.0f} MB"
            f" / budget {budget:.0f} MB"
        )
    # What one more model adds to a database holding the others: its lake data files (above,
    # its own) plus what dropping its rows from the database's tables saves (tables copied
    # into databases of 16 KB blocks; the lake's logs and DuckDB's block slack are not per model)
    db = _fresh_store(DATA / "real_all.duckdb")
    run_cli(["ingest", *paths, "--db", str(db), "-j", "1", "-q", "--file-timeout", "0"])
    print("  stored per model (default --values auto), database + lake:")
    for path in paths:
        saved = child_json([__file__, "--table-bytes", str(db), str(Path(path).resolve())])
        size = Path(path).stat().st_size
        duck = sum(saved.values())
        top = ", ".join(f"{t} {b / 1e3:.0f}" for t, b in list(saved.items())[:4])
        print(f"    {Path(path).name:<22} lake {lake_bytes[path] / 1e3:6.0f} KB + database "
              f"{duck / 1e3:5.0f} KB ({top}) = {(lake_bytes[path] + duck) / size * 100:.1f} % "
              "of the file")  # fmt: skip


def _fresh_store(db: Path) -> Path:
    for leftover in (db, db.with_suffix(".lake")):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(
            missing_ok=True)  # fmt: skip
    return db


def table_bytes_child(db: str, path: str) -> None:
    """Bytes the database's tables take with and without the rows of the model at `path`
    (each table copied alone into a new database of 16 KB blocks): table -> difference."""
    import duckdb

    scratch = Path(db).with_name("table_bytes.duckdb")
    source = duckdb.connect(db, read_only=True)
    model_id = source.execute("SELECT model_id FROM models WHERE path = ?", [path]).fetchone()[0]
    tables = [t for t in _tables(db) if "model_id" in _columns(source, t)]
    source.close()
    out = {}
    for table in tables:
        sizes = []
        for where in ("true", f"model_id <> '{model_id}'"):
            for leftover in (scratch, scratch.with_suffix(".duckdb.wal")):
                leftover.unlink(missing_ok=True)
            con = duckdb.connect()
            con.execute(f"ATTACH '{scratch}' AS d (BLOCK_SIZE 16384)")
            con.execute(f"ATTACH '{db}' AS s (READ_ONLY)")
            con.execute(f'CREATE TABLE d."{table}" AS SELECT * FROM s."{table}" WHERE {where}')
            con.execute("CHECKPOINT d")
            con.close()
            sizes.append(scratch.stat().st_size)
        out[table] = max(0, sizes[0] - sizes[1])
    scratch.unlink(missing_ok=True)
    print(json.dumps(dict(sorted(out.items(), key=lambda kv: -kv[1]))))


def _columns(con, table: str) -> list[str]:
    return [r[0] for r in con.execute(f'DESCRIBE "{table}"').fetchall()]


def _tables(db: str) -> list[str]:
    import duckdb

    con = duckdb.connect(db, read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
    finally:
        con.close()


def _count_models(db: Path) -> int:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM models").fetchall()[0][0]
    finally:
        con.close()


CASES = {"tree": tree_case, "real": real_case}


def main(cases: list[str]) -> None:
    """The named cases (all when none is named): `python bench/bench_scale.py tree`."""
    sys.path.insert(0, str(ROOT / "bench"))
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case {', '.join(unknown)}; cases: {', '.join(CASES)}")
    for name in cases or CASES:
        CASES[name]()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    if len(sys.argv) > 1 and sys.argv[1] == "--cli":
        cli_child(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--table-bytes":
        table_bytes_child(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--views":
        views_child(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--make-tree":
        make_tree(DATA / f"tree{TREE_SIZE}", TREE_SIZE)
    else:
        main(sys.argv[1:])
