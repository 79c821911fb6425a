"""`make bench`, analysis kernels: statistics and spectra against their baselines, in one run.

- statistics: `tensor_stats` on a 25088×4096 tensor (VGG16's fc1), float32, float16 and
  bfloat16 (as the reader widens it: float32 with zero low halves), compiled kernels against
  the numpy reference path; GB/s per core = stored bytes / CPU seconds of this process (the
  machine is shared: CPU time is what one core spent, wall time is shown);
- small tensors: every tensor of a 2,000-file zoo of the demo CNN (fresh random weights), the
  current `tensor_stats` against the one before the compiled kernels (BASELINE_COMMIT);
- the VGG16-shaped file ingested by the real CLI (fresh process each) with --spectra
  none, auto and all;
- spectra of the same file's matrices against scipy's full SVD of them (WeightWatcher's
  analyze() spends ~95 % of its time there), float32 as stored, one slice per conv position;
- dev-only, when /work/venvs/ww (weightwatcher installed) and the keras.applications files
  (bench/make_ww_models.py) exist: bench/compare_weightwatcher.py on VGG16 and ResNet50,
  interleaved best-of-N wall and CPU seconds of analyze() against wpipe's whole ingest, the
  spectra's added cost and the spectra alone (skipped with a line saying what is missing
  otherwise).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_ingest import DATA, SEED_MODEL, VGG16, make_big, measure  # noqa: E402

BASELINE_COMMIT = "c030108"  # main before the compiled statistics and the new spectra
ZOO_FILES = 2000
WW_PYTHON = Path("/work/venvs/ww/bin/python")
WW_MODELS = DATA / "ww"


def cpu_timed(fn, repeats: int = 3) -> tuple[float, float]:
    """Best (CPU seconds, wall seconds) of `repeats` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.process_time() - cpu, time.perf_counter() - wall))
    return best


def stats_kernel() -> None:
    from wpipe.analyse.stats import StatsOptions, tensor_stats

    options = StatsOptions()
    rng = np.random.default_rng(0)
    w32 = rng.standard_normal((25088, 4096), dtype=np.float32) * 0.01
    started = time.perf_counter()
    tensor_stats(w32[:1000], options, kernel="compiled")  # import numba, load/compile kernels
    print(f"numba start-up in this process (import, kernels from cache): "
          f"{time.perf_counter() - started:.2f} s")  # fmt: skip
    # bfloat16 reaches the statistics as the reader widens it (exact float32, low halves 0);
    # its GB/s count the 2 stored bytes per value, as float16's do.
    bf16 = (w32.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    cases = (("float32", w32, 4), ("float16", w32.astype(np.float16), 2), ("bfloat16", bf16, 2))
    for label, w, stored in cases:
        ref_cpu, _ = cpu_timed(lambda w=w: tensor_stats(w, options, kernel="numpy"), 2)
        cpu, wall = cpu_timed(lambda w=w: tensor_stats(w, options, kernel="compiled"))
        melem = w.size / 1e6
        gbs = w.size * stored / 1e9
        print(
            f"stats 25088x4096 {label}: compiled {gbs / cpu:5.2f} GB/s per core "
            f"({melem / cpu:4.0f} M values/s; {cpu:.3f} s CPU, {wall:.3f} s wall) | numpy "
            f"reference {gbs / ref_cpu:5.2f} GB/s per core ({ref_cpu:.3f} s CPU) | "
            f"{ref_cpu / cpu:4.1f}x faster | target >= 250 M values/s (1 GB/s of float32)"
        )


def _baseline_analysis():
    """wpipe.analyse.stats as of BASELINE_COMMIT, or None without git history."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:pipeline/wpipe/analysis.py"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    path = DATA / "analysis_baseline.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("analysis_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["analysis_baseline"] = module
    spec.loader.exec_module(module)
    return module


def small_zoo() -> None:
    from wpipe.analyse import stats as analysis

    before = _baseline_analysis()
    if before is None:
        print("small zoo: skipped (no git history for the baseline)")
        return
    with h5py.File(SEED_MODEL, "r") as f:
        shapes = []
        f["model_weights"].visititems(
            lambda _n, obj: (
                shapes.append((obj.shape, obj.dtype))
                if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f"
                else None
            )
        )
    rng = np.random.default_rng(3)
    tensors = [rng.normal(0, 0.1, shape).astype(dtype) for shape, dtype in shapes]
    # One set of arrays reused for every file: the cost is per call, not per value.
    calls = ZOO_FILES * len(tensors)
    new_opts, old_opts = analysis.StatsOptions(), before.StatsOptions()

    def run(module, options):
        for _ in range(ZOO_FILES):
            for t in tensors:
                module.tensor_stats(t, options)

    old_cpu, _ = cpu_timed(lambda: run(before, old_opts), 2)
    new_cpu, _ = cpu_timed(lambda: run(analysis, new_opts), 2)
    values = sum(t.size for t in tensors) * ZOO_FILES
    print(
        f"stats, {ZOO_FILES}-file small zoo ({calls} tensors, {values / 1e6:.0f} M values): "
        f"now {new_cpu:.2f} s CPU, before {old_cpu:.2f} s | ratio {new_cpu / old_cpu:4.2f}x "
        f"(target <= 1.00x: small tensors not slower)"
    )


def vgg_ingest(big: Path) -> dict[str, float]:
    db = str(DATA / "bench_kernels.duckdb")
    seconds = {}
    for mode in ("none", "auto", "all"):
        run = measure("wpipe", [db, f"-j 1 --values none --spectra {mode}", str(big)])
        seconds[mode] = run["seconds"]
    print(
        "VGG16-shaped ingest (138M parameters, real CLI, -j 1, --values none): "
        + " | ".join(
            f"--spectra {m} {s:6.2f} s ({s / seconds['none']:4.2f}x none)"
            for m, s in seconds.items()
        )
        + " | target: auto <= 2x none"
    )
    return seconds


def spectra_vs_svd(big: Path) -> None:
    import scipy.linalg
    from wpipe.analyse.spectra import SpectraOptions, tensor_spectra

    ours_cpu = ours_wall = svd_cpu = svd_wall = 0.0
    exact_diff: dict = {}
    worst = {"lambda_max": 0.0, "stable_rank": 0.0, "log_norm": 0.0}
    with h5py.File(big, "r") as f:
        for name, _shape in VGG16:
            w = f[f"model_weights/{name}/{name}/kernel:0"][()]
            cls = "Conv2D" if w.ndim == 4 else "Dense"
            cpu, wall = time.process_time(), time.perf_counter()
            [result] = tensor_spectra(cls, {}, f"{name}/kernel:0", "kernel", "keras", w,
                                      SpectraOptions("all"))  # fmt: skip
            ours_cpu += time.process_time() - cpu
            ours_wall += time.perf_counter() - wall
            slices = w.reshape(-1, *w.shape[-2:])
            cpu, wall = time.process_time(), time.perf_counter()
            sv = [scipy.linalg.svd(s, compute_uv=False) for s in slices]
            svd_cpu += time.process_time() - cpu
            svd_wall += time.perf_counter() - wall
            evals = np.concatenate(sv).astype(np.float64) ** 2 * result.metrics["rescale"]
            for key, value in metrics_of(evals).items():
                worst[key] = max(worst[key], abs(result.metrics[key] - value) / abs(value))
            if name == "predictions":  # the one matrix whose float64 SVD takes < 10 s
                exact = metrics_of(np.linalg.svd(w.astype(np.float64), compute_uv=False) ** 2)
                exact_diff = {k: abs(result.metrics[k] - v) / abs(v) for k, v in exact.items()}
    print(
        f"spectra of the 16 VGG16-shaped kernels (every matrix): wpipe {ours_wall:6.1f} s wall "
        f"({ours_cpu:6.1f} s CPU) | scipy full SVD of the same matrices {svd_wall:6.1f} s wall "
        f"({svd_cpu:6.1f} s CPU) | {svd_wall / ours_wall:4.1f}x faster wall, "
        f"{svd_cpu / ours_cpu:4.1f}x CPU (target >= 5x WeightWatcher, ~95 % of it this SVD)"
    )
    against_svd = ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    against_f64 = ", ".join(f"{k} {v:.1e}" for k, v in exact_diff.items())
    print(f"  largest relative differences, all 16 against scipy's float32 SVD: {against_svd}; "
          f"predictions against a float64 SVD: {against_f64} (tolerance 1e-5)")  # fmt: skip


def metrics_of(evals: np.ndarray) -> dict:
    lam, norm = float(evals.max()), float(evals.sum())
    return {"lambda_max": lam, "stable_rank": norm / lam, "log_norm": float(np.log10(norm))}


def weightwatcher() -> None:
    models = {WW_MODELS / "vgg16.h5": 2, WW_MODELS / "resnet50.h5": 3}  # model: best of N runs
    if not WW_PYTHON.exists() or not all(p.exists() for p in models):
        print(f"WeightWatcher comparison: skipped (needs {WW_PYTHON} with weightwatcher and "
              f"{WW_MODELS}/vgg16.h5, resnet50.h5 from bench/make_ww_models.py)")  # fmt: skip
        return
    for model, repeats in models.items():
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "compare_weightwatcher.py"), "--ww-python",
             str(WW_PYTHON), "--summary", "--repeats", str(repeats), str(model)],
            capture_output=True, text=True,
        )  # fmt: skip
        print(done.stdout.rstrip() or done.stderr.strip().splitlines()[-1])


def main() -> None:
    big = DATA / "vgg16_like.h5"
    make_big(big)
    print("wpipe bench, kernels (one run; the machine is shared: ratios are what to compare)")
    stats_kernel()
    small_zoo()
    vgg_ingest(big)
    spectra_vs_svd(big)
    weightwatcher()
    print("load average at the end:", " ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
