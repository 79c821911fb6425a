"""weight_tiles pooling: every cell is numpy's mean (and largest-|w| value) of its block, the
blocks tile the matrix exactly, and small tensors keep one cell per weight."""

from __future__ import annotations

import numpy as np
import pytest
from wpipe.analyse import tiles


def test_small_tensors_keep_one_cell_per_weight():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 6)).astype(np.float32)
    cells = tiles.pool(tiles.matrix_view(kernel))
    matrix = kernel.reshape(36, 6)  # (kh·kw·in) × out
    assert len(cells["mean"]) == matrix.size
    for r, c, mean in zip(cells["row_start"], cells["col_start"], cells["mean"], strict=True):
        assert mean == matrix[r, c]
    assert np.array_equal(cells["peak"], cells["mean"])
    table = tiles.tile_table({"model_id": "m", "layer_path": "l", "weight_name": "w"}, kernel)
    assert table.column("peak").null_count == matrix.size  # a one-weight cell's peak is its mean


def test_large_tensors_are_mean_pooled_into_at_most_32_by_32_blocks():
    matrix = np.random.default_rng(1).normal(size=(300, 130))
    matrix[5, 7] = 40.0
    cells = tiles.pool(matrix)
    assert len(cells["mean"]) == 32 * 32
    covered = np.zeros(matrix.shape, dtype=int)
    for k in range(len(cells["mean"])):
        r0, r1 = cells["row_start"][k], cells["row_end"][k]
        c0, c1 = cells["col_start"][k], cells["col_end"][k]
        block = matrix[r0:r1, c0:c1]
        covered[r0:r1, c0:c1] += 1
        assert cells["mean"][k] == pytest.approx(block.mean(), rel=1e-12)
        assert cells["peak"][k] == block.flat[np.argmax(np.abs(block))]
    assert (covered == 1).all()  # the blocks tile the matrix exactly once
    heights = cells["row_end"] - cells["row_start"]
    widths = cells["col_end"] - cells["col_start"]
    assert set(heights) <= {300 // 32, 300 // 32 + 1} and set(widths) <= {4, 5}
    assert cells["peak"].max() == 40.0


def test_non_finite_values_are_left_out_of_a_cells_mean():
    matrix = np.random.default_rng(2).normal(size=(200, 100))
    matrix[0, 0] = np.nan
    cells = tiles.pool(matrix)
    first = (cells["row_start"] == 0) & (cells["col_start"] == 0)
    r1, c1 = cells["row_end"][first][0], cells["col_end"][first][0]
    assert cells["mean"][first][0] == pytest.approx(np.nanmean(matrix[:r1, :c1]))
    assert tiles.matrix_view(np.zeros(5)) is None  # 1-D tensors have no tiles


def test_a_models_cells_are_bounded_by_its_budget_and_its_first_kernel_kept_whole():
    # a ResNet-like model: a 7x7x3x64 stem, 50 conv kernels, a 2048x1000 classifier, biases
    shapes = [(7, 7, 3, 64), *[(3, 3, 256, 256)] * 50, (2048, 1000), *[(256,)] * 100]
    params = sum(int(np.prod(s)) for s in shapes)
    budget = tiles.TileBudget(shapes)
    rng = np.random.default_rng(3)
    total = 0
    for k, shape in enumerate(shapes):
        if len(shape) < 2:
            continue
        array = rng.normal(size=shape).astype(np.float32)
        table = tiles.tile_table({"model_id": "m", "layer_path": str(k), "weight_name": "w"},
                                 array, budget.cells(array))  # fmt: skip
        if k == 0:  # the stem, drawn by `filters`: every weight
            assert table.num_rows == array.size
        else:
            assert table.num_rows <= max(64, (params // 1024) // 52)
        total += table.num_rows
    assert total <= 7 * 7 * 3 * 64 + max(4096, params // 1024)
    small = tiles.TileBudget([(3, 3, 1, 8), (8, 4)])  # a small model keeps every weight
    assert [small.cells(np.zeros(s)) for s in ((3, 3, 1, 8), (8, 4))] == [16384, 1024]


def test_a_tensor_pooled_a_chunk_of_rows_at_a_time_gets_numpys_block_statistics(monkeypatch):
    monkeypatch.setattr(tiles, "POOL_CHUNK", 1000)  # 7 rows a chunk: chunks straddle no block
    matrix = np.random.default_rng(4).normal(size=(301, 140)).astype(np.float32)
    matrix[17, 3] = np.inf
    cells = tiles.pool(matrix)
    assert len(cells["mean"]) == 32 * 32
    for k in range(len(cells["mean"])):
        block = matrix[cells["row_start"][k] : cells["row_end"][k],
                       cells["col_start"][k] : cells["col_end"][k]].astype(np.float64)  # fmt: skip
        finite = block[np.isfinite(block)]
        assert cells["mean"][k] == pytest.approx(finite.mean(), rel=1e-9)
        zeroed = np.where(np.isfinite(block), block, 0)
        assert cells["peak"][k] == zeroed.flat[np.argmax(np.abs(zeroed))]


@pytest.mark.parametrize("shape", [(200, 16), (16, 200), (40, 40), (12, 9)])
def test_small_matrices_get_numpys_block_statistics_whatever_their_shortcuts(shape):
    # (200, 16): single-column blocks, rows pooled; (16, 200): the reverse; (12, 9): one
    # cell per weight. Non-finite values and a block of -0.0 only.
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=shape).astype(np.float32)
    matrix[0, 0], matrix[-1, -1], matrix[1, -1] = np.nan, np.inf, -np.inf
    matrix[-7:, :3] = -0.0
    table = tiles.tile_table({"model_id": "m", "layer_path": "l", "weight_name": "w"},
                             matrix, 1024)  # fmt: skip
    cells = table.to_pylist()
    assert len(cells) == min(matrix.size, 32 * 32) or matrix.size > 1024
    covered = np.zeros(shape, dtype=int)
    for cell in cells:
        block = matrix[cell["row_start"] : cell["row_end"],
                       cell["col_start"] : cell["col_end"]].astype(np.float64)  # fmt: skip
        covered[cell["row_start"] : cell["row_end"], cell["col_start"] : cell["col_end"]] += 1
        finite = block[np.isfinite(block)]
        if finite.size == 0:
            assert cell["mean"] is None
        else:
            assert cell["mean"] == pytest.approx(finite.mean(), rel=1e-9, abs=1e-300)
            assert not np.signbit(cell["mean"]) or finite.mean() < 0  # never -0.0
        if block.size == 1:
            assert cell["peak"] is None  # its mean
        else:
            zeroed = np.where(np.isfinite(block), block, 0)
            assert cell["peak"] == zeroed.flat[np.argmax(np.abs(zeroed))]
        assert (cell["rows"], cell["cols"]) == shape
    assert (covered == 1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8])
def test_a_small_matrix_reduced_in_one_pass_gets_the_loops_cells_bit_for_bit(monkeypatch, dtype):
    rng = np.random.default_rng(6)
    matrix = (rng.normal(size=(200, 16)) * 3).astype(dtype)
    if dtype != np.int8:
        matrix[3, 4], matrix[150, 0] = np.nan, -np.inf
        matrix[-9:, :] = -0.0
    one_pass = tiles.tile_columns(matrix, 1024)
    monkeypatch.setattr(tiles, "SMALL_REDUCE", 0)  # every matrix through the row-wise loop
    looped = tiles.tile_columns(matrix, 1024)
    for ours, theirs in zip(one_pass, looped, strict=True):
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert ours[name].dtype == theirs[name].dtype, name
            assert ours[name].tobytes() == theirs[name].tobytes(), name
