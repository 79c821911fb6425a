"""The Keras reference of `make bench` (run in the TensorFlow venv): load each model file with
Keras and compute wpipe's per-tensor statistics with numpy. Prints {"seconds", "files"}: the
time of loading and computing only (imports excluded)."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

try:
    import tf_keras as keras  # the Keras 2 writer of the bench's checkpoints
except ImportError:
    import keras

PERCENTILES = [1, 5, 25, 50, 75, 95, 99]


def stats(w: np.ndarray) -> dict:
    x = w.astype(np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    mean = x.mean()
    d = x - mean
    m2, m3, m4 = (d**2).mean(), (d**3).mean(), (d**4).mean()
    return {
        "mean": mean, "std": x.std(), "min": x.min(), "max": x.max(),
        "abs_mean": np.abs(x).mean(), "l1": np.abs(x).sum(), "l2": np.sqrt((x * x).sum()),
        "zeros": int((x == 0).sum()), "near": float((np.abs(x) < 1e-3).mean()),
        "pct": np.percentile(x, PERCENTILES).tolist(),
        "hist": np.histogram(x, bins=64)[0].tolist(),
        "skew": m3 / m2**1.5 if m2 > 0 else None, "kurt": m4 / m2**2 - 3 if m2 > 0 else None,
    }  # fmt: skip


def main(paths: list[str]) -> None:
    started = time.perf_counter()
    for path in paths:
        model = keras.models.load_model(path, compile=False)
        for weight in model.weights:
            stats(np.asarray(weight.numpy()))
        keras.backend.clear_session()
    print(json.dumps({"seconds": time.perf_counter() - started, "files": len(paths)}))


if __name__ == "__main__":
    main(sys.argv[1:])
