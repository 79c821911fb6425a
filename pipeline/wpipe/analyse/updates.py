"""analyse stage: what a fine-tune changed in one tensor, τ = W_child − W_base (pure functions).

Size (‖τ‖ / ‖W_base‖), whether the tensor was touched at all, and for matrices (a kernel
viewed as leading axes × last axis) how concentrated the update is: the share of ‖τ‖² in its
top singular values, its numerical rank and its effective rank (Roy & Vetterli 2007) — a
LoRA-like update is visibly low-rank. Two children of one base are compared by their updates:
their dot product and how often both moved a weight in opposite directions.
"""

from __future__ import annotations

import math

import numpy as np

SVD_MAX_ELEMENTS = 1 << 22  # 4 M: a larger update's spectrum is left out (NULL), not guessed
SVD_MAX_SIDE = 2048
KEPT_SINGULAR_VALUES = 64
EPS32 = float(np.finfo(np.float32).eps)


def as_matrix(array: np.ndarray) -> np.ndarray:
    """A tensor as (leading axes) × last axis, as spectra view kernels."""
    return array.reshape(-1, array.shape[-1]) if array.ndim >= 2 else array.reshape(1, -1)


def tensor_update(base: np.ndarray, child: np.ndarray) -> dict:
    """One `updates` row's figures for τ = child − base (same shape), in float64."""
    if base.shape != child.shape:
        raise ValueError(f"shapes differ: {base.shape} vs {child.shape}")
    b, c = base.astype(np.float64), child.astype(np.float64)
    tau = c - b
    base_l2, update_l2 = float(np.linalg.norm(b)), float(np.linalg.norm(tau))
    row = {
        "size": int(tau.size),
        "base_l2": base_l2,
        "update_l2": update_l2,
        "rel_update": update_l2 / base_l2 if base_l2 > 0 else None,
        "untouched": update_l2 == 0,
        "max_abs_update": float(np.abs(tau).max()) if tau.size else 0.0,
    }
    peak = max(float(np.abs(b).max(initial=0)), float(np.abs(c).max(initial=0)))
    return {**row, **_spectrum(tau, peak)}


def _spectrum(tau: np.ndarray, peak: float) -> dict:
    empty = dict.fromkeys(("rank", "effective_rank", "top1_share", "top8_share"))
    matrix = as_matrix(tau)
    m, n = matrix.shape
    if tau.ndim < 2 or min(m, n) < 2:
        return {**empty, "singular_values": None}
    if matrix.size > SVD_MAX_ELEMENTS or min(m, n) > SVD_MAX_SIDE:
        return {**empty, "singular_values": None}
    if not np.isfinite(matrix).all():
        return {**empty, "singular_values": None}
    s = np.linalg.svd(matrix, compute_uv=False)
    energy = s**2
    total = float(energy.sum())
    if total == 0:
        return {**empty, "rank": 0, "singular_values": []}
    # float32 storage rounds each weight by up to eps/2 of its size: noise whose spectral norm
    # stays below (√m + √n)·eps·max|w| — singular values under it are rounding, not update
    noise = (math.sqrt(m) + math.sqrt(n)) * EPS32 * peak
    p = s / s.sum()
    p = p[p > 0]
    return {
        "rank": int(np.count_nonzero(s > max(noise, 1e-6 * s[0]))),
        "effective_rank": float(math.exp(-(p * np.log(p)).sum())),
        "top1_share": float(energy[0] / total),
        "top8_share": float(energy[:8].sum() / total),
        "singular_values": [float(v) for v in s[:KEPT_SINGULAR_VALUES]],
    }


def update_pair(base: np.ndarray, child_a: np.ndarray, child_b: np.ndarray) -> dict:
    """Agreement of two children's updates of one base tensor: their dot product, and among
    the weights both changed, how many they pushed in opposite directions."""
    b = base.astype(np.float64)
    ta, tb = child_a.astype(np.float64) - b, child_b.astype(np.float64) - b
    both = (ta != 0) & (tb != 0)
    return {
        "dot": float(np.vdot(ta, tb)),
        "both_changed": int(np.count_nonzero(both)),
        "sign_conflicts": int(np.count_nonzero(both & (np.sign(ta) != np.sign(tb)))),
    }
