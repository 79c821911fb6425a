"""build_tables gathers a model's per-tensor rows (values, tiles, units, histograms) into a few
Arrow tables: every tensor's rows are there, in tensor order, with the values numpy gives."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from wpipe.analyse import tables, tiles
from wpipe.analyse.stats import StatsOptions, sample_indices
from wpipe.analyse.tables import FileInfo, ValuesMode, build_tables
from wpipe.core import schema
from wpipe.readers import Layer, Model, Tensor

# tensors on both sides of the gather threshold (tables.KEEP_RAW = 4096 rows)
SHAPES = {"a": [(5, 5, 1, 8), (8,)], "b": [(200, 40), (40,)], "c": [(40, 3), (3,)]}


def model() -> Model:
    rng = np.random.default_rng(7)
    layers = []
    for name, shapes in SHAPES.items():
        tensors = []
        for role, shape in zip(("kernel", "bias"), shapes, strict=True):
            array = rng.normal(size=shape).astype(np.float32)
            tensors.append(Tensor(role, role, True, f"{name}/{role}:0", shape, "float32",
                                  lambda array=array: array.copy()))  # fmt: skip
        config = {"name": name, "units": shapes[0][-1]}
        layers.append(Layer(name, name, "Dense", config, True, tensors))
    return Model("m.h5", "h5-model", "2.15.0", "tensorflow", "Sequential", None, None, layers)


def analysed(values: str) -> tuple[dict[str, pa.Table], list]:
    emitted: list = []
    built = build_tables(model(), FileInfo("m", "m.h5", "0" * 64, 1, 0.0), StatsOptions(),
                         ValuesMode.parse(values), emitted.append)  # fmt: skip
    return built, emitted


def arrays() -> list[tuple[str, str, np.ndarray]]:
    return [(layer.layer_path, t.weight_name, t.load()) for layer in model().layers
            for t in layer.tensors]  # fmt: skip


def of(table: pa.Table, layer_path: str, weight_name: str) -> pa.Table:
    mask = pc.and_(pc.equal(table["layer_path"], layer_path),
                   pc.equal(table["weight_name"], weight_name))  # fmt: skip
    return table.filter(mask)


def values_rows(emitted: list) -> pa.Table:
    target = schema.WEIGHT_VALUES.arrow_schema
    return pa.concat_tables(pa.Table.from_batches([e]).cast(target) if isinstance(e, pa.RecordBatch)
                            else e for e in emitted)  # fmt: skip


@pytest.mark.parametrize("gather", [tables.VALUES_GATHER, 100])
def test_every_value_is_emitted_once_in_tensor_order(monkeypatch, gather):
    monkeypatch.setattr(tables, "VALUES_GATHER", gather)  # 100: a table per tensor or two
    rows = values_rows(analysed("all")[1])
    expected_keys, expected_index, expected_values = [], [], []
    for layer_path, weight_name, array in arrays():
        expected_keys += [(layer_path, weight_name)] * array.size
        expected_index.append(np.arange(array.size))
        expected_values.append(array.reshape(-1))
    keys = list(zip(rows["layer_path"].to_pylist(), rows["weight_name"].to_pylist(), strict=True))
    assert keys == expected_keys
    assert np.array_equal(rows["flat_index"].to_numpy(), np.concatenate(expected_index))
    assert np.array_equal(rows["value"].to_numpy(), np.concatenate(expected_values))
    assert set(rows["model_id"].to_pylist()) == {"m"}


def test_a_sample_is_the_same_uniform_draw_for_small_and_large_tensors():
    rows = values_rows(analysed("sample:50")[1])
    for layer_path, weight_name, array in arrays():
        mine = of(rows, layer_path, weight_name)
        index = mine["flat_index"].to_numpy()
        seed = zlib.crc32(f"m/{layer_path}/{weight_name}".encode())
        assert np.array_equal(index, sample_indices(array.size, 50, seed))
        assert len(set(index)) == min(50, array.size) and np.all(np.diff(index) > 0)
        assert np.array_equal(mine["value"].to_numpy(), array.reshape(-1)[index])


def test_a_models_tiles_units_and_histograms_hold_every_tensors_rows():
    built = analysed("none")[0]
    budget = tiles.TileBudget([a.shape for _, _, a in arrays()])
    for layer_path, weight_name, array in arrays():
        key = {"model_id": "m", "layer_path": layer_path, "weight_name": weight_name}
        alone = tiles.tile_table(key, array, budget.cells(array))  # as a tensor on its own
        mine = of(built["weight_tiles"], layer_path, weight_name)
        assert mine.num_rows == 0 if alone is None else mine.equals(alone)
        counts = of(built["histograms"], layer_path, weight_name)["count"].to_pylist()
        assert counts == np.histogram(array.astype(np.float64), 64)[0].tolist()
        if array.ndim < 2:
            continue  # a Dense bias has no units
        units = of(built["units"], layer_path, weight_name)
        columns = array.reshape(-1, array.shape[-1]).astype(np.float64)
        # float32 tensors: per-slice figures rounded to float32 (docs: values)
        assert np.allclose(units["mean"].to_numpy(), columns.mean(axis=0), rtol=1e-6)
        assert np.allclose(units["l2"].to_numpy(), np.linalg.norm(columns, axis=0), rtol=1e-6)
        assert units["index"].to_pylist() == list(range(array.shape[-1]))
