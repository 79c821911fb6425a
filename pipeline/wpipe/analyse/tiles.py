"""analyse: a weight tensor as a matrix of cells for the `matrix` and `filters` charts.

A tensor of shape (..., n) is viewed as the (prod(...), n) matrix of its C-order values: a
Dense kernel as is, a conv kernel (kh, kw, in, out) as (kh·kw·in) × out, a recurrent kernel
(in, G·u) with its gates side by side along the columns. Each tensor gets a number of cells
from its model's budget (TileBudget): a tensor of at most that many elements keeps one cell
per weight; a larger one is mean-pooled to at most side × side cells of near-equal blocks
(block k of n rows spans rows [k·n // p, (k+1)·n // p)), so the charts work whatever
`--values` kept. Each cell also keeps its largest-magnitude value (signed) for max-|w| pooling.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from wpipe.core import schema

TILE_EXACT = 16384  # a model's first 4-D kernel keeps one cell per weight up to this (`filters`)
TILE_GRID = 32  # at most this many cells per side of any other tensor
TILE_MIN = 64  # cells a matrix gets however tight its model's budget
# Cells per model: 4,096, or one per 1,024 parameters in a larger model, shared evenly by its
# matrices. At ~35 bytes a cell (database + lake) that is ~0.9 % of a float32 file's size for
# models above ~4M parameters, and at most ~150 KB below.
TILE_BUDGET_MIN = 4096
TILE_PARAMS_PER_CELL = 1024


def matrix_view(array: np.ndarray) -> np.ndarray | None:
    """The tensor as a 2-D matrix (prod of leading axes) × last axis; None below 2-D."""
    if array.ndim < 2 or array.size == 0:
        return None
    return array.reshape(-1, array.shape[-1])


def block_edges(n: int, parts: int) -> np.ndarray:
    """parts + 1 edges splitting range(n) into near-equal consecutive blocks."""
    return (np.arange(parts + 1, dtype=np.int64) * n) // parts


class TileBudget:
    """How many cells each matrix of one model gets (docs: values)."""

    def __init__(self, shapes: list[tuple[int, ...]]) -> None:
        matrices = [s for s in shapes if len(s) >= 2 and math.prod(s)]
        params = sum(math.prod(s) for s in shapes)
        budget = max(TILE_BUDGET_MIN, params // TILE_PARAMS_PER_CELL)
        self.per_matrix = min(TILE_GRID * TILE_GRID, max(TILE_MIN, budget // max(len(matrices), 1)))
        self._first_kernel = True

    def cells(self, array: np.ndarray) -> int:
        """The cell limit of the next tensor (in layer order): the first 4-D kernel (a first
        convolution, drawn by `filters`) keeps every weight up to TILE_EXACT."""
        if array.ndim == 4 and self._first_kernel:
            self._first_kernel = False
            return max(TILE_EXACT, self.per_matrix)
        return self.per_matrix


def pool(matrix: np.ndarray, cells: int = TILE_GRID * TILE_GRID) -> dict[str, np.ndarray]:
    """Cells of the matrix: tile index, row/column span, mean and signed max-|w| of each.
    One cell per weight when the matrix has at most `cells` elements, else at most
    side × side blocks, side = min(TILE_GRID, isqrt(cells)).

    Non-finite values are left out of a cell's mean (a cell of only NaN/inf has mean NaN)."""
    rows, cols = matrix.shape
    if matrix.size <= cells:
        return _one_per_weight(matrix)
    exact = False
    side = min(TILE_GRID, math.isqrt(cells))
    row_edges = block_edges(rows, rows if exact else min(rows, side))
    col_edges = block_edges(cols, cols if exact else min(cols, side))
    starts_r, starts_c = row_edges[:-1], col_edges[:-1]
    sums, counts, high, low = _block_reduce(matrix, row_edges, starts_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    peak = np.where(high >= -low, high, low)
    tile_row, tile_col = np.meshgrid(
        np.arange(len(starts_r)), np.arange(len(starts_c)), indexing="ij"
    )
    return {
        "tile_row": tile_row.ravel(),
        "tile_col": tile_col.ravel(),
        "row_start": row_edges[:-1][tile_row].ravel(),
        "row_end": row_edges[1:][tile_row].ravel(),
        "col_start": col_edges[:-1][tile_col].ravel(),
        "col_end": col_edges[1:][tile_col].ravel(),
        "mean": mean.ravel(),
        "peak": peak.ravel(),
    }


def _one_per_weight(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """pool's cells when each holds one weight: the weight itself (non-finite: mean NaN,
    peak 0), without the block reductions (most tensors of small models)."""
    rows, cols = matrix.shape
    tile_row = np.repeat(np.arange(rows, dtype=np.int64), cols)
    tile_col = np.tile(np.arange(cols, dtype=np.int64), rows)
    values = matrix.reshape(-1).astype(np.float64)
    finite = np.isfinite(values)
    # + 0.0 as pool's sums (zeros + value) do: a -0.0 weight has mean 0.0
    mean = np.where(finite, values + 0.0, np.nan)
    return {
        "tile_row": tile_row,
        "tile_col": tile_col,
        "row_start": tile_row,
        "row_end": tile_row + 1,
        "col_start": tile_col,
        "col_end": tile_col + 1,
        "mean": mean,
        "peak": np.where(finite, values, 0.0),
    }


# Elements reduced at a time: pooling a large tensor costs a few MB of scratch, not 4x it.
POOL_CHUNK = 1 << 20
# Matrices up to this many elements are reduced in one pass of a few calls (_small_block_reduce):
# below ~100,000 elements per-call overhead dominates (a 200 x 16 conv kernel: 0.14 ms against
# 0.5 ms through the row-wise loop); above, the loop's row-wise reductions win. Values of
# 4 bytes or fewer only: their float64 sums are bitwise the loop's (float64 ones are not).
SMALL_REDUCE = 1 << 16


def _block_reduce(
    matrix: np.ndarray, row_edges: np.ndarray, starts_c: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Per cell: sum and count of the finite values, max and min (non-finite counted as 0),
    at most POOL_CHUNK elements at a time: each chunk's rows reduced per column (numpy's
    row-wise axis-0 reductions; reduceat along axis 0 strides down columns, ~20x slower),
    then its columns per block. Sums start from 0.0 (a block summing to -0.0 is 0.0)."""
    if matrix.size <= SMALL_REDUCE and matrix.dtype.itemsize <= 4:
        return _small_block_reduce(matrix, row_edges, starts_c)
    n_blocks = len(row_edges) - 1
    shape = (n_blocks, len(starts_c))
    sums, counts = np.zeros(shape), np.zeros(shape, dtype=np.int64)
    high, low = np.full(shape, -np.inf), np.full(shape, np.inf)
    widths = np.diff(np.append(starts_c, matrix.shape[1]))
    step = max(1, POOL_CHUNK // max(matrix.shape[1], 1))
    for k in range(n_blocks):
        for a in range(row_edges[k], row_edges[k + 1], step):
            part = matrix[a : min(a + step, row_edges[k + 1])]
            total, finite, top, bottom = _column_reduce(part)
            sums[k] += np.add.reduceat(total, starts_c)
            counts[k] += (
                finite * widths if np.isscalar(finite) else np.add.reduceat(finite, starts_c)
            )
            high[k] = np.maximum(high[k], np.maximum.reduceat(top, starts_c))
            low[k] = np.minimum(low[k], np.minimum.reduceat(bottom, starts_c))
    return sums, counts, high, low


def _small_block_reduce(
    matrix: np.ndarray, row_edges: np.ndarray, starts_c: np.ndarray
) -> tuple[np.ndarray, ...]:
    """_block_reduce of a small matrix in one pass: an axis whose blocks are single rows
    (columns) is not reduced, and the counts of an all-finite matrix are the block sizes.
    The same values as the loop (rows, then columns, each summed in order in float64; sums
    start from 0.0, so a block summing to -0.0 is 0.0 here too)."""
    finite = np.isfinite(matrix)
    values = np.where(finite, matrix, 0).astype(np.float64, copy=False)
    starts_r = row_edges[:-1]
    rows_whole = len(starts_r) == matrix.shape[0]
    cols_whole = len(starts_c) == matrix.shape[1]

    def reduce(ufunc: np.ufunc, data: np.ndarray) -> np.ndarray:
        if not rows_whole:
            data = ufunc.reduceat(data, starts_r, axis=0)
        return data if cols_whole else ufunc.reduceat(data, starts_c, axis=1)

    if finite.all():
        col_edges = np.append(starts_c, matrix.shape[1])
        counts = np.outer(np.diff(row_edges), np.diff(col_edges)).astype(np.int64)
    else:
        counts = reduce(np.add, finite.astype(np.int64))
    return (
        reduce(np.add, values) + 0.0,
        counts,
        reduce(np.maximum, values),
        reduce(np.minimum, values),
    )


def _column_reduce(part: np.ndarray) -> tuple:
    """Per column of `part`: the float64 sum and the count of its finite values (a scalar when
    all are finite), and the max and min as float64 with non-finite values counted as 0.
    A finite float64 sum means finite values (NaN and ±inf propagate); a float64 tensor's
    finite sum that overflows takes the slow path, to the same numbers."""
    if part.dtype == np.float16:  # exact in float32, whose reductions numpy vectorises
        part = part.astype(np.float32)
    total = part.sum(axis=0, dtype=np.float64)
    if np.isfinite(total).all():
        return (
            total,
            part.shape[0],
            part.max(axis=0).astype(np.float64),
            part.min(axis=0).astype(np.float64),
        )
    finite = np.isfinite(part)
    values = np.where(finite, part, 0).astype(np.float64, copy=False)
    return (values.sum(axis=0), finite.sum(axis=0, dtype=np.int64), values.max(axis=0),
            values.min(axis=0))  # fmt: skip


def tile_columns(
    array: np.ndarray, limit: int = TILE_GRID * TILE_GRID
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """The weight_tiles columns of one tensor but its key, at most `limit` cells, as numpy
    arrays of the table's types, and the null masks of `mean` and `peak` (None below 2-D)."""
    matrix = matrix_view(array)
    if matrix is None:
        return None
    cells = pool(matrix, limit)
    n = len(cells["mean"])
    columns = {
        "rows": np.full(n, matrix.shape[0], dtype=np.int64),
        "cols": np.full(n, matrix.shape[1], dtype=np.int64),
    }
    for name in ("tile_row", "tile_col", "row_start", "row_end", "col_start", "col_end"):
        columns[name] = cells[name].astype(np.int32)
    columns["mean"], columns["peak"] = cells["mean"], cells["peak"]
    # a cell of one weight has no peak of its own (it is the mean): NULL keeps the file small
    single = (cells["row_end"] - cells["row_start"]) * (cells["col_end"] - cells["col_start"]) == 1
    return columns, {"mean": ~np.isfinite(cells["mean"]), "peak": single}


def tile_table(
    key: dict[str, str], array: np.ndarray, limit: int = TILE_GRID * TILE_GRID
) -> pa.Table | None:
    """The weight_tiles rows of one tensor, at most `limit` cells (None below 2-D)."""
    found = tile_columns(array, limit)
    if found is None:
        return None
    cells, masks = found
    n = len(cells["mean"])
    # the key on every row, repeated by Arrow (a Python list of n copies costs ~4x more)
    columns = {name: pa.repeat(pa.scalar(value, pa.string()), n) for name, value in key.items()}
    for name, values in cells.items():
        columns[name] = pa.array(values, mask=masks.get(name))
    return pa.table(columns, schema=schema.WEIGHT_TILES.arrow_schema)
