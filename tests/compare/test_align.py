"""Permutation-aware distance (wpipe.compare.align): hidden units matched before measuring."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from wpipe.compare.align import align
from wpipe.readers import open_model

from tests.conftest import FIXTURES, MODELS

ALIGN = FIXTURES / "align"


def _aligned(path_a, path_b):
    with open_model(str(path_a)) as a, open_model(str(path_b)) as b:
        return align(a, b)


def _permute(f: h5py.File, path: str, perm: np.ndarray, axis: int, positions: int = 1) -> None:
    data = f[path][()]
    if positions > 1:  # a Dense after Flatten: rows are (positions × units)
        rows = data.reshape(positions, len(perm), -1)[:, perm]
        f[path][...] = rows.reshape(data.shape)
        return
    f[path][...] = np.take(data, perm, axis=axis)


def test_a_copy_with_its_hidden_units_permuted_aligns_to_zero(tmp_path):
    copy = tmp_path / "mlp_permuted.h5"
    shutil.copy2(ALIGN / "mlp_seed1.h5", copy)
    rng = np.random.default_rng(7)
    p1, p2 = rng.permutation(32), rng.permutation(16)
    with h5py.File(copy, "r+") as f:
        w = "model_weights"
        for path, perm, axis in (
            ("h1/h1/kernel:0", p1, 1), ("h1/h1/bias:0", p1, 0),
            ("bn/bn/gamma:0", p1, 0), ("bn/bn/beta:0", p1, 0),
            ("bn/bn/moving_mean:0", p1, 0), ("bn/bn/moving_variance:0", p1, 0),
            ("h2/h2/kernel:0", p1, 0), ("h2/h2/kernel:0", p2, 1), ("h2/h2/bias:0", p2, 0),
            ("out/out/kernel:0", p2, 0),
        ):  # fmt: skip
            _permute(f, f"{w}/{path}", perm, axis)
    result = _aligned(ALIGN / "mlp_seed1.h5", copy)
    assert result.status == "ok"
    assert result.raw > 0.5
    assert result.aligned == pytest.approx(0.0, abs=1e-12)
    assert all(r["aligned_rel_l2"] < 1e-12 for r in result.rows)


def test_a_convnet_permuted_through_flatten_aligns_to_zero(tmp_path):
    copy = tmp_path / "cnn_permuted.h5"
    shutil.copy2(ALIGN / "cnn_seed1.h5", copy)
    rng = np.random.default_rng(3)
    p1, p2 = rng.permutation(8), rng.permutation(12)
    with h5py.File(copy, "r+") as f:
        w = "model_weights"
        _permute(f, f"{w}/c1/c1/kernel:0", p1, 3)
        _permute(f, f"{w}/c1/c1/bias:0", p1, 0)
        _permute(f, f"{w}/c2/c2/kernel:0", p1, 2)
        _permute(f, f"{w}/c2/c2/kernel:0", p2, 3)
        _permute(f, f"{w}/c2/c2/bias:0", p2, 0)
        # 8×8 → conv 3 → 6×6 → pool 2 → 3×3 → conv 2 → 2×2×12 → Flatten: 4 positions
        _permute(f, f"{w}/out/out/kernel:0", p2, 0, positions=4)
    result = _aligned(ALIGN / "cnn_seed1.h5", copy)
    assert result.status == "ok" and result.raw > 0.5
    assert result.aligned == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_independently_trained_twins_are_closer_once_aligned(kind):
    trained = json.loads((ALIGN / "trained.json").read_text())["train_accuracy"]
    assert min(trained[f"{kind}_seed{s}"] for s in (1, 2)) > 0.9  # both learned the task
    result = _aligned(ALIGN / f"{kind}_seed1.h5", ALIGN / f"{kind}_seed2.h5")
    assert result.status == "ok"
    assert result.aligned < 0.85 * result.raw
    # the output layer's units are the classes: never permuted
    out = [r for r in result.rows if r["layer_path"] == "out" and r["weight_name"] == "bias"]
    assert out[0]["aligned_rel_l2"] == pytest.approx(out[0]["raw_rel_l2"])


@pytest.mark.parametrize(
    ("name", "reason"),
    [("k3_mha.h5", "MultiHeadAttention"), ("k3_lstm.h5", "Embedding"),
     ("arch/k3_nested_bidi.h5", "nested")],
)  # fmt: skip
def test_architectures_outside_chains_are_named_not_guessed(name, reason):
    result = _aligned(MODELS / name, MODELS / name)
    assert result.status != "ok" and reason in result.status
    assert result.aligned is None


def test_compare_aligned_adds_the_aligned_distance_beside_the_raw_one(tmp_path):
    import json as _json

    from typer.testing import CliRunner
    from wpipe.cli import app

    from tests.conftest import Warehouse

    models = tmp_path / "m"
    shutil.copytree(ALIGN, models)
    w = Warehouse(tmp_path)
    assert not w.ingest(models).failed
    db = ["--db", str(w.db_path)]
    runner = CliRunner()
    result = runner.invoke(
        app, ["compare", "mlp_seed1", "mlp_seed2", "--aligned", "-f", "json", *db]
    )
    assert result.exit_code == 0, result.output
    rows = [r for r in _json.loads(result.stdout) if r["rel_l2"] is not None]
    direct = _aligned(ALIGN / "mlp_seed1.h5", ALIGN / "mlp_seed2.h5")
    hidden = {r["path_a"]: r["rel_l2_aligned"] for r in rows}
    assert set(hidden) == {"h1", "bn", "h2", "out"}
    assert all(hidden[la] < r["rel_l2"] for r in rows for la in [r["path_a"]])
    matrix = runner.invoke(
        app, ["compare", "mlp_seed1", "mlp_seed2", "cnn_seed1", "--matrix", "--aligned", *db]
    )
    assert matrix.exit_code == 0, matrix.output
    assert f"{direct.aligned:.4g}" in matrix.output and "not aligned" in matrix.output
