"""analyse stage: how one weight tensor moved between two models (pure functions)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from wpipe.readers.base import Model

CHUNK = 1 << 18


def tensor_drift(a: np.ndarray, b: np.ndarray) -> dict:
    """Change from `a` to `b` (same shape), in float64:

    rel_l2 = ‖b−a‖/‖a‖, cosine = a·b/(‖a‖‖b‖), mean_abs_change = mean|b−a|,
    sign_flip_frac = fraction of elements whose sign strictly flips (a·b < 0),
    max_abs_change = max|b−a|. Undefined values (a zero norm, NaN weights) are None.
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    fa, fb = a.reshape(-1), b.reshape(-1)
    n = fa.size
    sums = dict.fromkeys(("aa", "bb", "ab", "dd", "abs", "peak", "flips"), 0.0)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf weights give None below
        for start in range(0, n, CHUNK):
            _accumulate(fa[start : start + CHUNK], fb[start : start + CHUNK], sums)
    aa, bb, ab, dd = sums["aa"], sums["bb"], sums["ab"], sums["dd"]
    abs_sum, peak, flips = sums["abs"], sums["peak"], sums["flips"]
    out = {
        "size": n,
        "rel_l2": math.sqrt(dd) / math.sqrt(aa) if aa > 0 else None,
        "cosine": ab / math.sqrt(aa * bb) if aa > 0 and bb > 0 else None,
        "mean_abs_change": abs_sum / n if n else None,
        "sign_flip_frac": flips / n if n else None,
        "max_abs_change": peak if n else None,
        "l2_a": math.sqrt(aa),
        "l2_b": math.sqrt(bb),
        "l2_diff": math.sqrt(dd),
    }
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}


def _accumulate(a: np.ndarray, b: np.ndarray, sums: dict) -> None:
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    d = y - x
    sums["aa"] += float(np.multiply(x, x).sum())
    sums["bb"] += float(np.multiply(y, y).sum())
    sums["ab"] += float(np.multiply(x, y).sum())
    sums["dd"] += float(np.multiply(d, d).sum())
    np.abs(d, out=d)
    sums["abs"] += float(d.sum())
    if d.size:
        sums["peak"] = max(sums["peak"], float(d.max()))
    sums["flips"] += int(np.count_nonzero(np.multiply(x, y) < 0))


def symmetric_distance(l2_a: float, l2_b: float, l2_diff: float) -> float | None:
    """‖A−B‖ / mean(‖A‖, ‖B‖): 0 for equal weights, 2 for opposite ones, order-free."""
    scale = (l2_a + l2_b) / 2
    return l2_diff / scale if scale > 0 else None


def drift_row(
    ids: tuple[str, str],
    key: tuple[str, str],
    a: np.ndarray,
    b: np.ndarray,
    series: str | None,
    shas: tuple[str | None, str | None],
) -> dict:
    """One `drift` row: tensor `key` (layer_path, weight_name) of model ids[0] -> ids[1]."""
    return {
        "model_a": ids[0], "model_b": ids[1], "layer_path": key[0], "weight_name": key[1],
        **tensor_drift(a, b), "series": series, "sha256_a": shas[0], "sha256_b": shas[1],
    }  # fmt: skip


def weighted_layers(model: Model) -> tuple[str, ...]:
    """The paths of the layers that hold weights, in the model's order."""
    return tuple(layer.layer_path for layer in model.layers if layer.tensors)


def position_pairs(model_a: Model, model_b: Model) -> dict[str, str]:
    """A's layer path -> B's for two models of one arch_id: the k-th weighted layer with the
    k-th, whatever names a session's layer counters gave them (align_layers' `position`
    pass, without a query per pair)."""
    a, b = weighted_layers(model_a), weighted_layers(model_b)
    return dict(zip(a, b, strict=True)) if len(a) == len(b) else {}  # else: a changed file


def positions(model: Model) -> dict[tuple[str, str], tuple[int, int]]:
    """(layer path, weight name) -> (place among the weighted layers, place in its layer):
    how two models of one arch_id pair their tensors (align_layers' `position` pairs)."""
    weighted = [layer for layer in model.layers if layer.tensors]
    return {(layer.layer_path, t.weight_name): (i, j) for i, layer in enumerate(weighted)
            for j, t in enumerate(layer.tensors)}  # fmt: skip
