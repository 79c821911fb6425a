"""Dev-only: WeightWatcher's analyze() and wpipe's spectra on the same Keras files, layer by layer.

WeightWatcher needs Keras and TensorFlow to read a model, so it runs in another virtualenv
(never a wpipe dependency), e.g.

    python3 -m venv /tmp/wwvenv && /tmp/wwvenv/bin/pip install weightwatcher==0.7.7 tensorflow
    .venv/bin/python bench/compare_weightwatcher.py --ww-python /tmp/wwvenv/bin/python \\
        tests/fixtures/models/k3_conv2d.keras tests/fixtures/models/k3_lstm.keras

Prints, per layer WeightWatcher analysed, both values of alpha, lambda_max, stable_rank,
log_norm, entropy and D with their relative differences, and the largest differences overall.
Layers are matched by name (flat models; WeightWatcher names nested layers differently).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))

from wpipe.ingest import ingest
from wpipe.spectra import SpectraOptions
from wpipe.store import Database
from wpipe.tables import ValuesMode

WW_SCRIPT = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import weightwatcher as ww
model = keras.models.load_model(sys.argv[1], compile=False)
started, cpu = time.perf_counter(), time.process_time()
details = ww.WeightWatcher(model=model).analyze()
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
rows = json.loads(details.to_json(orient="records", double_precision=15))
print(json.dumps({"seconds": seconds, "cpu": cpu, "version": ww.__version__, "rows": rows}))
"""
METRICS = ("alpha", "xmin", "lambda_max", "stable_rank", "log_norm", "entropy", "D", "num_evals")
STABLE_XMIN = 1e-6  # a fit is stable where both tools chose the same xmin (to this, relative)


def run_weightwatcher(python: str, path: Path) -> dict:
    done = subprocess.run(
        [python, "-c", WW_SCRIPT, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_wpipe(paths: list[Path], root: Path) -> tuple[dict, float, float]:
    """Rows by (path, layer), wall and CPU seconds (all threads) of the ingest, which runs in
    this process (no worker pool: its CPU time is this process's)."""
    db = Database(root / "w.duckdb")
    try:
        started, cpu = time.perf_counter(), time.process_time()
        report = ingest(
            paths,
            db,
            root / "w.lake",
            values=ValuesMode("none"),
            jobs=1,
            spectra=SpectraOptions("all", cache_dir=None),
            file_timeout=None,
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert not report.failed, report.failed
        rows = db.con.execute(
            f"SELECT m.path, s.layer_path, {', '.join(f's.{c}' for c in METRICS)}, s.status, "
            "s.N, s.M, s.rf "
            "FROM spectra s JOIN models m USING (model_id) "
            "WHERE s.matrix IN ('full', 'pooled', 'filters') AND s.N IS NOT NULL"
        ).fetchall()
    finally:
        db.close()
    return (
        {
            (r[0], r[1]): dict(zip((*METRICS, "status", "N", "M", "rf"), r[2:], strict=True))
            for r in rows
        },
        seconds,
        cpu,
    )


def rel(a, b) -> float | None:
    if a is None or b is None:
        return None
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ww-python", required=True, help="python of a venv with weightwatcher")
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--show", default="alpha,lambda_max,stable_rank", help="metrics printed")
    parser.add_argument("--summary", action="store_true", help="one line per model (make bench)")
    args = parser.parse_args()
    if args.summary:
        summary(args.ww_python, [p.resolve() for p in args.models])
        return
    show = args.show.split(",")
    paths = [p.resolve() for p in args.models]
    with tempfile.TemporaryDirectory() as tmp:
        ours, wp_seconds, _ = run_wpipe(paths, Path(tmp))
    worst = dict.fromkeys(METRICS, 0.0)
    ww_seconds = 0.0
    header = f"{'model':<24} {'layer':<14} {'N×M×rf':<14}" + "".join(
        f" {m + ' ww':>12} {'wpipe':>12} {'rel':>8}" for m in show
    )
    print(header)
    for path in paths:
        ww = run_weightwatcher(args.ww_python, path)
        ww_seconds += ww["seconds"]
        for row in ww["rows"]:
            mine = ours.get((str(path), row["name"]))
            shape = f"{row['N']}×{row['M']}×{row['rf']}"
            if mine is None:
                print(f"{path.name:<24} {row['name']:<14} {shape:<14} not in wpipe")
                continue
            line = f"{path.name:<24} {row['name']:<14} {shape:<14}"
            if (row["N"], row["M"], row["rf"]) != (mine["N"], mine["M"], mine["rf"]):
                theirs = f"{mine['N']}×{mine['M']}×{mine['rf']}"
                print(f"{line} another matrix in wpipe ({theirs}; README: Spectral health)")
                continue
            for metric in METRICS:
                diff = rel(row.get(metric), mine[metric])
                if diff is not None:
                    worst[metric] = max(worst[metric], diff)
                if metric in show:
                    shown = "-" if diff is None else f"{diff:.1e}"
                    line += f" {row.get(metric, float('nan')):>12.6g} "
                    line += f"{mine[metric] if mine[metric] is not None else float('nan'):>12.6g}"
                    line += f" {shown:>8}"
            print(line)
    print("largest relative differences:", {k: f"{v:.2e}" for k, v in worst.items()})
    print(f"WeightWatcher {ww['version']} analyze(): {ww_seconds:.1f} s; wpipe ingest with "
          f"--spectra all (reading, statistics and spectra): {wp_seconds:.1f} s")  # fmt: skip


def summary(python: str, paths: list[Path]) -> None:
    """Per model: analyze() time against `wpipe ingest --spectra all`, and the differences."""
    for path in paths:
        with tempfile.TemporaryDirectory() as tmp:
            ours, wp_seconds, wp_cpu = run_wpipe([path], Path(tmp))
        ww = run_weightwatcher(python, path)
        alpha, unstable, worst = (
            [],
            0,
            dict.fromkeys(("lambda_max", "stable_rank", "log_norm"), 0.0),
        )
        matched = 0
        for row in ww["rows"]:
            mine = ours.get((str(path), row["name"]))
            if mine is None or (row["N"], row["M"], row["rf"]) != (
                mine["N"],
                mine["M"],
                mine["rf"],
            ):
                continue
            matched += 1
            for metric in worst:
                diff = rel(row.get(metric), mine[metric])
                worst[metric] = max(worst[metric], diff or 0.0)
            if row.get("alpha", -1) <= 0 or mine["alpha"] is None:
                continue
            if (rel(row.get("xmin"), mine["xmin"]) or 0.0) > STABLE_XMIN:
                unstable += 1  # another tail chosen: the KS minimum is flat there
                continue
            alpha.append(rel(row["alpha"], mine["alpha"]))
        within = sum(d <= 0.01 for d in alpha)
        print(
            f"WeightWatcher {ww['version']} on {path.stem}: {matched} layers | analyze() "
            f"{ww['seconds']:6.1f} s wall, {ww['cpu']:6.1f} s CPU; wpipe ingest --spectra all "
            f"(read, statistics, spectra) {wp_seconds:6.1f} s wall, {wp_cpu:6.1f} s CPU: "
            f"{ww['seconds'] / wp_seconds:4.1f}x faster wall, {ww['cpu'] / wp_cpu:4.1f}x CPU "
            f"(target 5x) | alpha within 1 %: "
            f"{within}/{len(alpha)} stable fits (largest difference "
            f"{max(alpha, default=0.0):.1e}); {unstable} fits with another xmin | largest "
            + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
        )


if __name__ == "__main__":
    main()
