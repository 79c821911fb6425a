"""Keras 0.x, Keras 1 and CuDNN layouts. Those Keras versions cannot run on this Python, so
h5py writes files that follow keras_formats.md (§1.2, §3, §6) name for name; the expected
values are numpy operations on the arrays written."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from tests.conftest import Warehouse

RNG = np.random.default_rng(11)


def values(w: Warehouse, layer_path: str, weight_name: str) -> np.ndarray:
    rows = w.query(
        "SELECT value FROM weight_values WHERE layer_path = ? AND weight_name = ? "
        "ORDER BY flat_index",
        [layer_path, weight_name],
    )
    return np.array([v for (v,) in rows], dtype=np.float32)


def test_keras0_sequential_and_graph_weights(tmp_path):
    arrays = [RNG.normal(size=(4, 3)).astype("f4"), RNG.normal(size=3).astype("f4")]
    with h5py.File(tmp_path / "k0_seq.h5", "w") as f:
        f.attrs["nb_layers"] = 2
        g0 = f.create_group("layer_0")
        g0.attrs["nb_params"] = 2
        for p, a in enumerate(arrays):
            g0[f"param_{p}"] = a
        f.create_group("layer_1").attrs["nb_params"] = 0  # e.g. an Activation layer
    with h5py.File(tmp_path / "k0_graph.h5", "w") as f:
        g = f.create_group("graph")
        g.attrs["nb_params"] = 1
        g["param_0"] = arrays[0]
    w = Warehouse(tmp_path)
    assert not w.ingest(tmp_path).failed
    models = w.query("SELECT name, format, model_class, n_layers, n_params FROM models ORDER BY 1")
    assert models == [
        ("k0_graph", "h5-keras0", "Graph", 1, 12),
        ("k0_seq", "h5-keras0", "Sequential", 2, 15),
    ]
    rows = w.query(
        "SELECT layer_path, weight_name, role, mean FROM weights JOIN models USING (model_id) "
        "WHERE name = 'k0_seq' ORDER BY weight_index"
    )
    assert [r[:3] for r in rows] == [("layer_0", "param_0", "unknown"),
                                     ("layer_0", "param_1", "unknown")]  # fmt: skip
    assert [r[3] for r in rows] == pytest.approx([float(a.mean()) for a in arrays])


def keras1_recurrent_file(path, class_name: str, gates: str, units=3, inputs=4):
    """Keras 1 with consume_less='cpu': one array per gate, saved in the layer's own order."""
    stored = {}
    for gate in gates:
        stored[f"rnn_1_W_{gate}"] = RNG.normal(size=(inputs, units)).astype("f4")
        stored[f"rnn_1_U_{gate}"] = RNG.normal(size=(units, units)).astype("f4")
        stored[f"rnn_1_b_{gate}"] = RNG.normal(size=units).astype("f4")
    config = {"class_name": "Sequential", "config": [{"class_name": class_name, "config": {
        "name": "rnn_1", "output_dim": units, "consume_less": "cpu"}}]}  # fmt: skip
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"1.2.2"
        f.attrs["model_config"] = json.dumps(config).encode()
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = [b"rnn_1"]
        group = weights.create_group("rnn_1")
        group.attrs["weight_names"] = [n.encode() for n in stored]
        for name, a in stored.items():
            group[name] = a
    return stored


@pytest.mark.parametrize(("class_name", "saved", "keras2"), [("LSTM", "icfo", "ifco"),
                                                            ("GRU", "zrh", "zrh")])  # fmt: skip
def test_keras1_per_gate_arrays_become_keras2_fused_tensors(tmp_path, class_name, saved, keras2):
    stored = keras1_recurrent_file(tmp_path / "k1.h5", class_name, saved)
    w = Warehouse(tmp_path)
    assert not w.ingest(tmp_path / "k1.h5").failed
    rows = w.query("SELECT weight_name, role, shape FROM weights ORDER BY weight_index")
    g, u = len(keras2), 3
    assert rows == [("kernel", "kernel", [4, g * u]),
                    ("recurrent_kernel", "recurrent_kernel", [u, g * u]),
                    ("bias", "bias", [g * u])]  # fmt: skip
    for name, letter in (("kernel", "W"), ("recurrent_kernel", "U"), ("bias", "b")):
        want = np.concatenate([stored[f"rnn_1_{letter}_{gate}"] for gate in keras2], axis=-1)
        np.testing.assert_array_equal(values(w, "rnn_1", name), want.ravel())
    assert w.query("SELECT n_params FROM models") == [(g * (4 * u + u * u + u),)]


def test_theano_conv_kernels_and_cudnn_weights_are_tagged(tmp_path):
    th_kernel = RNG.normal(size=(8, 3, 3, 3)).astype("f4")  # (filters, in, rows, cols)
    config = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution2D", "config": {"name": "conv_1", "nb_filter": 8, "nb_row": 3,
                                                   "nb_col": 3, "dim_ordering": "th"}},
        {"class_name": "CuDNNLSTM", "config": {"name": "cu", "units": 2}},
    ]}  # fmt: skip
    with h5py.File(tmp_path / "mixed.h5", "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = [b"conv_1", b"cu"]
        conv = weights.create_group("conv_1")
        conv.attrs["weight_names"] = [b"conv_1_W", b"conv_1_b"]
        conv["conv_1_W"], conv["conv_1_b"] = th_kernel, np.zeros(8, "f4")
        cu = weights.create_group("cu")
        cu.attrs["weight_names"] = [b"cu/kernel:0", b"cu/recurrent_kernel:0", b"cu/bias:0"]
        cu["cu/kernel:0"] = RNG.normal(size=(8, 8)).astype("f4")
        cu["cu/recurrent_kernel:0"] = RNG.normal(size=(2, 8)).astype("f4")
        cu["cu/bias:0"] = RNG.normal(size=16).astype("f4")  # 8u: input then recurrent biases
    w = Warehouse(tmp_path)
    assert not w.ingest(tmp_path).failed
    rows = w.query("SELECT layer_path, weight_name, layout FROM weights ORDER BY weight_index")
    assert rows == [("conv_1", "kernel", "theano"), ("conv_1", "bias", "keras"),
                    ("cu", "kernel", "cudnn"), ("cu", "recurrent_kernel", "cudnn"),
                    ("cu", "bias", "cudnn")]  # fmt: skip
    assert w.query("SELECT filters, kernel_size FROM layers WHERE layer_path = 'conv_1'") == [
        (8, [3, 3])
    ]
