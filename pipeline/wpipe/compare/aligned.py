"""compare stage: distances of stored models after aligning their hidden units (align.py),
beside the raw ones; reads the two files again, stores nothing."""

from __future__ import annotations

import math
from contextlib import ExitStack
from itertools import combinations

import duckdb

from wpipe.compare import model_files
from wpipe.compare.align import Alignment, align
from wpipe.store.remote import open_save


def aligned_pair(con: duckdb.DuckDBPyConnection, a: str, b: str) -> Alignment:
    """B aligned to A (the reference), from their files."""
    files = model_files(con, [a, b])
    with open_save(files[a].path) as model_a, open_save(files[b].path) as model_b:
        return align(model_a, model_b)


def per_layer(alignment: Alignment) -> dict[str, dict[str, float | None]]:
    """Per layer of A: ‖B−A‖/‖A‖ raw and aligned (as compare's rel_l2), and the symmetric
    distance ‖A−B‖ / mean(‖A‖, ‖B‖) raw and aligned (as the distance matrix's)."""
    sums: dict[str, dict[str, float]] = {}
    for row in alignment.rows:
        s = sums.setdefault(row["layer_path"], dict.fromkeys(("a", "b", "raw", "aligned"), 0.0))
        s["a"] += row["l2_a"] ** 2
        s["b"] += row["l2_b"] ** 2
        s["raw"] += row["l2_diff"] ** 2
        s["aligned"] += row["l2_diff_aligned"] ** 2
    out = {}
    for layer, s in sums.items():
        a, b = math.sqrt(s["a"]), math.sqrt(s["b"])
        scale = (a + b) / 2
        out[layer] = {
            "rel_l2": math.sqrt(s["raw"]) / a if a else None,
            "rel_l2_aligned": math.sqrt(s["aligned"]) / a if a else None,
            "distance": math.sqrt(s["raw"]) / scale if scale else None,
            "distance_aligned": math.sqrt(s["aligned"]) / scale if scale else None,
        }
    return out


def aligned_matrix(
    con: duckdb.DuckDBPyConnection, model_ids: list[str]
) -> tuple[list[tuple[str, str, float, float]], dict[tuple[str, str], str]]:
    """Whole-model distances of every two models, raw and aligned: rows (a, b, raw, aligned)
    and, for pairs the alignment does not handle, the reason."""
    rows, refused = [], {}
    with ExitStack() as stack:
        files = model_files(con, model_ids)
        models = {m: stack.enter_context(open_save(files[m].path)) for m in model_ids}
        for a, b in combinations(model_ids, 2):
            result = align(models[a], models[b])
            if result.status != "ok":
                refused[a, b] = result.status
                continue
            rows.append((a, b, result.raw, result.aligned))
    return rows, refused
