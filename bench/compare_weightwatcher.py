"""Dev-only: WeightWatcher's analyze() and wpipe's spectra on the same Keras files, layer by layer.

WeightWatcher needs Keras and TensorFlow to read a model, so it runs in another virtualenv
(never a wpipe dependency), e.g.

    python3 -m venv /tmp/wwvenv && /tmp/wwvenv/bin/pip install weightwatcher==0.7.7 tensorflow
    .venv/bin/python bench/compare_weightwatcher.py --ww-python /tmp/wwvenv/bin/python \\
        tests/fixtures/models/k3_conv2d.keras tests/fixtures/models/k3_lstm.keras

Prints, per layer WeightWatcher analysed, both values of alpha, lambda_max, stable_rank,
log_norm, entropy and D with their relative differences, and the largest differences overall.
Layers are matched by name (flat models; WeightWatcher names nested layers differently).

`--summary` (make bench): per model, the best of `--repeats` interleaved runs of
WeightWatcher's analyze() (in a process that loaded the model once: the load is not timed)
and of wpipe, as ratios: wpipe's whole ingest with `--spectra all`, what the spectra add to
an ingest (`--spectra all` less `--spectra none`), and the spectra alone: every tensor's, as
the ingest's SpectraCollector computes them (background threads), on arrays loaded beforehand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))

from wpipe.analyse.spectra import SpectraOptions
from wpipe.analyse.spectra_tables import SpectraCollector
from wpipe.analyse.tables import ValuesMode
from wpipe.ingest.driver import ingest
from wpipe.readers import open_model
from wpipe.store import Database

WW_SCRIPT = r"""
import json, os, sys, time, warnings
warnings.filterwarnings("ignore")
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
import weightwatcher as ww
model = keras.models.load_model(sys.argv[1], compile=False)
print(json.dumps({"ready": True}), flush=True)
for _ in sys.stdin:  # one analyze() per line: timed runs interleave with wpipe's
    started, cpu = time.perf_counter(), time.process_time()
    details = ww.WeightWatcher(model=model).analyze()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rows = json.loads(details.to_json(orient="records", double_precision=15))
    print(json.dumps({"seconds": seconds, "cpu": cpu, "version": ww.__version__, "rows": rows}),
          flush=True)
"""
METRICS = ("alpha", "xmin", "lambda_max", "stable_rank", "log_norm", "entropy", "D", "num_evals")
STABLE_XMIN = 1e-6  # a fit is stable where both tools chose the same xmin (to this, relative)


class WeightWatcher:
    """WeightWatcher in its own virtualenv, the model loaded once; `analyze()` times one run
    of its analyze() (wall and CPU seconds of that process, all threads)."""

    def __init__(self, python: str, path: Path) -> None:
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen([python, "-c", WW_SCRIPT, str(path)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)  # fmt: skip
        self._reply("ready")

    def analyze(self) -> dict:
        self.proc.stdin.write("analyze\n")
        self.proc.stdin.flush()
        return self._reply("rows")

    def _reply(self, field: str) -> dict:
        for line in self.proc.stdout:  # TensorFlow may print lines of its own
            if line.startswith("{") and field in (reply := json.loads(line)):
                return reply
        self.log.seek(0)
        raise RuntimeError("WeightWatcher failed: " + self.log.read().strip()[-2000:])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.log.close()


def run_weightwatcher(python: str, path: Path) -> dict:
    ww = WeightWatcher(python, path)
    try:
        return ww.analyze()
    finally:
        ww.close()


def run_wpipe(paths: list[Path], root: Path, mode: str = "all") -> tuple[dict, float, float]:
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
            spectra=SpectraOptions(mode, cache_dir=None),
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


def spectra_alone(path: Path) -> tuple[float, float]:
    """Wall and CPU seconds of the spectra of every tensor of the file as an ingest computes
    them (wpipe.analyse.spectra_tables.SpectraCollector: tensors up to 64 MB on background threads,
    one per core, larger ones in this thread), without reading, statistics or lake: the
    arrays are loaded beforehand."""
    tensors = []
    with open_model(path) as model:
        for layer in model.layers:
            for t in layer.tensors:
                if t.status == "ok":
                    key = {"model_id": path.stem, "layer_path": layer.layer_path,
                           "weight_name": t.weight_name}  # fmt: skip
                    tensors.append((key, layer.class_name, layer.config, t, t.load()))
    started, cpu = time.perf_counter(), time.process_time()
    collector = SpectraCollector(SpectraOptions("all"))
    for tensor in tensors:
        collector.add(*tensor)
    collector.results()
    return time.perf_counter() - started, time.process_time() - cpu


def rel(a, b) -> float | None:
    if a is None or b is None:
        return None
    return abs(a - b) / max(abs(a), abs(b), 1e-300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ww-python", required=True, help="python of a venv with weightwatcher")
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--show", default="alpha,lambda_max,stable_rank", help="metrics printed")
    parser.add_argument("--summary", action="store_true", help="timings per model (make bench)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs (--summary)")
    args = parser.parse_args()
    if args.summary:
        summary(args.ww_python, [p.resolve() for p in args.models], args.repeats)
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
                print(f"{line} another matrix in wpipe ({theirs}; docs: spectral)")
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


def summary(python: str, paths: list[Path], repeats: int) -> None:
    """Per model, best of `repeats` interleaved runs (the machine is shared): WeightWatcher's
    analyze() against wpipe's whole ingest with --spectra all, against what the spectra add to
    an ingest (--spectra all less --spectra none), and against the spectra alone; then the
    differences of the metrics."""
    for path in paths:
        ww = WeightWatcher(python, path)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in ("ww", "all", "none", "alone")}
        loads = [os.getloadavg()[0]]
        try:
            for _ in range(repeats):
                theirs = ww.analyze()
                runs["ww"].append((theirs["seconds"], theirs["cpu"]))
                for mode in ("none", "all"):
                    with tempfile.TemporaryDirectory() as tmp:
                        ours, seconds, cpu = run_wpipe([path], Path(tmp), mode)
                    runs[mode].append((seconds, cpu))
                    if mode == "all":
                        mine = ours
                runs["alone"].append(spectra_alone(path))
                loads.append(os.getloadavg()[0])
        finally:
            ww.close()
        best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in runs.items()}
        added = tuple(a - n for a, n in zip(best["all"], best["none"], strict=True))
        ww_wall, ww_cpu = best["ww"]

        def vs(label: str, wall: float, cpu: float, ww: tuple = best["ww"]) -> str:
            return (f"{label} {wall:6.2f} s wall, {cpu:6.2f} s CPU: "
                    f"{ww[0] / wall:5.1f}x faster wall, {ww[1] / cpu:5.1f}x CPU")  # fmt: skip

        print(
            f"WeightWatcher {theirs['version']} on {path.stem}, best of {repeats} interleaved "
            f"runs (1-minute load average {min(loads):.1f} to {max(loads):.1f}): analyze() "
            f"{ww_wall:6.2f} s wall, {ww_cpu:6.2f} s CPU (model already loaded); target >= 5x\n"
            f"  {vs('wpipe ingest --spectra all (read, statistics, lake, spectra)', *best['all'])}"
            f"\n  {vs('wpipe spectra, added to an ingest (--spectra all less none)', *added)}"
            f"\n  {vs('wpipe spectra alone (every tensor, on the ingest threads)', *best['alone'])}"
        )
        print("  " + differences(path, theirs["rows"], mine))


def differences(path: Path, rows: list[dict], ours: dict) -> str:
    """alpha within 1 % on the stable fits, and the largest differences of the norms."""
    alpha, unstable, matched = [], 0, 0
    worst = dict.fromkeys(("lambda_max", "stable_rank", "log_norm"), 0.0)
    for row in rows:
        mine = ours.get((str(path), row["name"]))
        if mine is None or (row["N"], row["M"], row["rf"]) != (mine["N"], mine["M"], mine["rf"]):
            continue
        matched += 1
        for metric in worst:
            worst[metric] = max(worst[metric], rel(row.get(metric), mine[metric]) or 0.0)
        if row.get("alpha", -1) <= 0 or mine["alpha"] is None:
            continue
        if (rel(row.get("xmin"), mine["xmin"]) or 0.0) > STABLE_XMIN:
            unstable += 1  # another tail chosen: the KS minimum is flat there
            continue
        alpha.append(rel(row["alpha"], mine["alpha"]))
    within = sum(d <= 0.01 for d in alpha)
    return (
        f"{matched} layers | alpha within 1 %: {within}/{len(alpha)} stable fits (largest "
        f"difference {max(alpha, default=0.0):.1e}); {unstable} fits with another xmin | largest "
        + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    )


if __name__ == "__main__":
    main()
