"""Legacy HDF5 files written by real tf_keras (Keras 2) and Keras 3, checked against what
Keras itself reported when it wrote them (tests/fixtures/expected, from make_fixtures.py):
count_params, trainable split, layer order and classes, and every tensor's values."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from tests.conftest import EXPECTED, MODELS, Warehouse, expected

LEGACY = sorted(
    p.name[: -len(".json")]
    for p in EXPECTED.glob("*.json")
    if (p.name.endswith(".h5.json") and ".weights.h5" not in p.name) or ".weights_only.h5" in p.name
)
WEIGHTS_ONLY = [n for n in LEGACY if json.loads((EXPECTED / f"{n}.json").read_text())[
    "save_call"] == "model.save_weights"]  # fmt: skip


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    w = Warehouse(tmp_path_factory.mktemp("legacy"))
    report = w.ingest(*[MODELS / name for name in LEGACY])
    assert not report.failed, [o.message for o in report.failed]
    return w


def model_id(w: Warehouse, name: str) -> str:
    return w.query("SELECT model_id FROM models WHERE path LIKE ?", [f"%/{name}"])[0][0]


def test_every_legacy_fixture_kind_is_present():
    for kind in (
        "dense_bn_frozen",
        "nested",
        "lstm",
        "gru_reset_after",
        "gru_reset_before",
        "bidi_td",
        "conv2d",
        "mha",
        "float16",
        "bfloat16",
        "long_names",
        "uncompiled",
    ):
        assert f"k2_{kind}.h5" in LEGACY, kind  # fmt: skip
    assert any(n.startswith("k3_") for n in LEGACY)
    assert WEIGHTS_ONLY


@pytest.mark.parametrize("name", LEGACY)
def test_model_row_matches_keras(loaded, name):
    spec, _ = expected(name)
    row = loaded.query(
        "SELECT format, keras_version, backend, model_class, n_params, n_trainable, "
        "n_non_trainable, n_layers FROM models WHERE model_id = ?",
        [model_id(loaded, name)],
    )[0]
    fmt, version, backend, model_class, n_params, n_trainable, n_non_trainable, n_layers = row
    assert n_params == spec["count_params"]
    assert version == spec["keras_version"]
    assert backend == spec["backend"]
    if spec["save_call"] == "model.save":
        assert fmt == "h5-model"
        assert model_class == spec["model_class"]
        assert (n_trainable, n_non_trainable) == (spec["n_trainable"], spec["n_non_trainable"])
        assert n_layers == len(spec["layers"])
    else:
        assert fmt == "h5-weights" and model_class is None


@pytest.mark.parametrize("name", [n for n in LEGACY if n not in WEIGHTS_ONLY])
def test_layers_match_keras_in_order(loaded, name):
    spec, _ = expected(name)
    rows = loaded.query(
        "SELECT layer_path, layer_name, class_name, n_params, trainable FROM layers "
        "WHERE model_id = ? ORDER BY layer_index",
        [model_id(loaded, name)],
    )
    want = [
        (lay["layer_path"], lay["layer_name"], lay["class_name"], lay["n_params"], lay["trainable"])
        for lay in spec["layers"]
    ]
    assert rows == want


@pytest.mark.parametrize("name", LEGACY)
def test_every_tensor_matches_the_array_keras_returned(loaded, name):
    spec, arrays = expected(name)
    mid = model_id(loaded, name)
    rows = {
        (r[0], r[1]): r[2:]
        for r in loaded.query(
            "SELECT layer_path, weight_name, role, shape, dtype, trainable, size, mean, std, "
            "min, max, l2, p05, p50, p95, zero_count FROM weights WHERE model_id = ?",
            [mid],
        )
    }
    assert len(rows) == len(spec["weights"])
    full_model = spec["save_call"] == "model.save"
    for w in spec["weights"]:
        layer_path = w["layer_path"] if full_model else w["layer_path"].split("/")[0]
        role, shape, dtype, trainable, size, *stats = rows[(layer_path, w["weight_name"])]
        a = arrays[w["key"]].astype(np.float64).ravel()
        assert (role, shape, dtype) == (w["role"], w["shape"], w["dtype"])
        if full_model:
            assert trainable == w["trainable"], (layer_path, w["weight_name"])
        assert size == a.size
        want = [a.mean(), a.std(), a.min(), a.max(), np.linalg.norm(a),
                *np.percentile(a, [5, 50, 95]), int((a == 0).sum())]  # fmt: skip
        assert stats == pytest.approx(want, rel=1e-9, abs=1e-12), (layer_path, w["weight_name"])


@pytest.mark.parametrize("name", ["k2_lstm.h5", "k3_bfloat16.h5", "k2_float16.h5"])
def test_weight_values_and_histograms_reproduce_the_arrays(loaded, name):
    spec, arrays = expected(name)
    mid = model_id(loaded, name)
    for w in spec["weights"]:
        key = [mid, w["layer_path"], w["weight_name"]]
        values = loaded.query(
            "SELECT value FROM weight_values WHERE model_id = ? AND layer_path = ? "
            "AND weight_name = ? ORDER BY flat_index",
            key,
        )
        np.testing.assert_array_equal(
            np.array([v for (v,) in values], dtype=np.float32),
            arrays[w["key"]].astype(np.float32).ravel(),
        )
        counts = loaded.query(
            "SELECT count FROM histograms WHERE model_id = ? AND layer_path = ? "
            "AND weight_name = ? ORDER BY bin",
            key,
        )
        want, _ = np.histogram(arrays[w["key"]].astype(np.float64), bins=64)
        assert [c for (c,) in counts] == want.tolist()


def test_weights_only_file_counts_params_but_cannot_know_frozen_layers(loaded):
    spec, _ = expected("k2_dense_bn_frozen.weights_only.h5")
    row = loaded.query(
        "SELECT n_params, n_non_trainable FROM models WHERE model_id = ?",
        [model_id(loaded, "k2_dense_bn_frozen.weights_only.h5")],
    )[0]
    bn_moving = sum(
        int(np.prod(w["shape"])) for w in spec["weights"]
        if w["role"] in ("moving_mean", "moving_variance")
    )  # fmt: skip
    assert row == (spec["count_params"], bn_moving)


def test_long_names_file_really_has_chunked_attributes():
    with h5py.File(MODELS / "k2_long_names.h5") as f:
        assert "layer_names" not in f["model_weights"].attrs
        assert "layer_names1" in f["model_weights"].attrs


def test_optimizer_state_is_counted_not_taken_for_layers(loaded):
    rows = dict(
        loaded.query(
            "SELECT regexp_extract(path, '[^/]+$'), n_optimizer_tensors FROM models "
            "WHERE path LIKE '%dense_bn_frozen.h5' OR path LIKE '%uncompiled.h5'"
        )
    )
    assert rows["k2_uncompiled.h5"] == 0
    assert rows["k2_dense_bn_frozen.h5"] > 0
    paths = loaded.query("SELECT DISTINCT layer_path FROM layers")
    assert not any("optimizer" in p or p.startswith("Adam") for (p,) in paths)


def write_keras1_model(path):
    """A Keras 1.2.2 full-model file by its layout (keras_formats.md §3.1, §3.2, §6): no
    keras_version on model_weights, fixed-length name arrays, `dense_1_W` names, a list-style
    Sequential config with Keras 1 keys, BatchNormalization's `running_std` variance.
    Keras 1 cannot run on this Python, so h5py writes what it wrote."""
    rng = np.random.default_rng(5)
    arrays = {
        "dense_1": {"dense_1_W": rng.normal(size=(4, 3)), "dense_1_b": rng.normal(size=3)},
        "batchnormalization_1": {
            f"batchnormalization_1_{n}": rng.random(3)
            for n in ("gamma", "beta", "running_mean", "running_std")
        },
    }
    config = {
        "class_name": "Sequential",
        "config": [
            {"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 3,
                                               "activation": "relu", "trainable": True}},
            {"class_name": "BatchNormalization", "config": {"name": "batchnormalization_1"}},
        ],
    }  # fmt: skip
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"1.2.2"
        f.attrs["model_config"] = json.dumps(config).encode()
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = np.array([n.encode() for n in arrays], dtype="S20")
        for layer, weights in arrays.items():
            g = group.create_group(layer)
            g.attrs["weight_names"] = np.array([w.encode() for w in weights], dtype="S40")
            for name, value in weights.items():
                g[name] = value.astype(np.float32)
    return arrays


def test_keras1_layout_gets_keras2_roles_and_counts(tmp_path):
    arrays = write_keras1_model(tmp_path / "k1.hdf5")
    w = Warehouse(tmp_path)
    assert not w.ingest(tmp_path / "k1.hdf5").failed
    rows = w.query(
        "SELECT layer_path, weight_name, role, trainable, mean FROM weights ORDER BY weight_index"
    )
    means = [
        float(a.astype(np.float32).mean()) for layer in arrays.values() for a in layer.values()
    ]
    assert [r[:4] for r in rows] == [
        ("dense_1", "kernel", "kernel", True),
        ("dense_1", "bias", "bias", True),
        ("batchnormalization_1", "gamma", "gamma", True),
        ("batchnormalization_1", "beta", "beta", True),
        ("batchnormalization_1", "moving_mean", "moving_mean", False),
        ("batchnormalization_1", "moving_variance", "moving_variance", False),
    ]
    assert [r[4] for r in rows] == pytest.approx(means)
    model = w.query("SELECT keras_version, n_params, n_trainable, n_non_trainable FROM models")
    assert model == [("1.2.2", 27, 21, 6)]
    assert w.query("SELECT units, activation FROM layers WHERE layer_path = 'dense_1'") == [
        (3, "relu")
    ]


def test_files_repeating_a_config_share_its_parse_and_a_bad_one_fails_every_time(tmp_path):
    from wpipe.readers import ModelReadError, open_model

    from tests.conftest import dense_config, write_legacy_h5

    weights = {"d": {"d/kernel:0": np.ones((2, 3), "f4"), "d/bias:0": np.zeros(3, "f4")}}
    other = {"e": {"e/kernel:0": np.ones((2, 3), "f4"), "e/bias:0": np.zeros(3, "f4")}}
    training = json.dumps({"loss": "mse", "optimizer_config": {"class_name": "SGD"}}).encode()
    paths = [write_legacy_h5(tmp_path / f"{k}.h5", weights, dense_config("d"),
                             training_config=training) for k in "ab"]  # fmt: skip
    paths.append(write_legacy_h5(tmp_path / "c.h5", other, dense_config("e")))
    seen = []
    for path in [*paths, paths[0]]:
        with open_model(path) as m:
            seen.append((m.optimizer, m.loss, [(la.layer_path, la.class_name, la.config["units"])
                                               for la in m.layers]))  # fmt: skip
    same = ("SGD", "mse", [("d", "Dense", 3)])
    assert seen == [same, same, (None, None, [("e", "Dense", 3)]), same]
    broken = write_legacy_h5(tmp_path / "x.h5", weights, b'{"class_name": ')
    for _ in range(2):
        with pytest.raises(ModelReadError) as err, open_model(broken):
            pass
        assert err.value.code == "bad-json" and "x.h5" in err.value.message
