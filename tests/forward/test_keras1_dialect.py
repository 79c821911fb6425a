"""Keras 1 configs (bare-list Sequential, `Convolution2D`/`nb_filter`/`border_mode`/
`output_dim`, `Merge`): the same weights in a Keras 1 file give the outputs tf_keras computed for
the Keras 2 model. No Keras 1 runs today, so the file is written with h5py in Keras 1.2.2's
layout (keras_formats.md §3: `W`/`b` weight names, no keras_version on the weights group) and
the expected arrays are tf_keras's for the identical Keras 2 model (k2_sequential)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from wpipe.forward import LayerOutput, forward
from wpipe.forward.keras1 import translate
from wpipe.readers import open_model

from tests.forward.keras_cases import MODELS, expected

KERAS1_SEQUENTIAL = [
    {"class_name": "Convolution2D", "config": {
        "name": "conv", "nb_filter": 4, "nb_row": 3, "nb_col": 3, "border_mode": "valid",
        "subsample": [1, 1], "dim_ordering": "tf", "activation": "relu", "bias": True,
        "batch_input_shape": [None, 8, 8, 1], "init": "glorot_uniform"}},
    {"class_name": "MaxPooling2D", "config": {
        "name": "pool", "pool_size": [2, 2], "strides": None, "border_mode": "valid",
        "dim_ordering": "tf"}},
    {"class_name": "Flatten", "config": {"name": "flat"}},
    {"class_name": "Dropout", "config": {"name": "drop", "p": 0.2}},
    {"class_name": "Dense", "config": {
        "name": "probs", "output_dim": 3, "activation": "softmax", "bias": True,
        "input_dim": None}},
]  # fmt: skip


def _keras1_file(path: Path) -> Path:
    import json

    with h5py.File(MODELS / "k2_sequential.h5", "r") as src:
        weights = {
            name: [
                np.asarray(src["model_weights"][name][f"{name}/{w}"])
                for w in ("kernel:0", "bias:0")
            ]
            for name in ("conv", "probs")
        }
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"1.2.2"
        f.attrs["model_config"] = json.dumps(
            {"class_name": "Sequential", "config": KERAS1_SEQUENTIAL}
        ).encode()
        group = f.create_group("model_weights")
        names = ["conv", "pool", "flat", "drop", "probs"]
        group.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            g = group.create_group(name)
            stored = [f"{name}_W", f"{name}_b"] if name in weights else []
            g.attrs["weight_names"] = [w.encode() for w in stored]
            for wname, array in zip(stored, weights.get(name, []), strict=True):
                g[wname] = array
    return path


def test_keras1_sequential_gives_keras2_outputs(tmp_path: Path) -> None:
    inputs, want = expected("k2_sequential")
    with open_model(_keras1_file(tmp_path / "k1.h5")) as model:
        got = {
            f"{r.layer_path}:{r.call_index}:{r.output_index}": r.array
            for r in forward(model, inputs)
            if isinstance(r, LayerOutput)
        }
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, atol=1e-4, rtol=1e-4, err_msg=key)


def test_keras1_names_translate_to_keras2() -> None:
    assert translate("Convolution1D", {"nb_filter": 3, "filter_length": 5, "subsample_length": 2,
                                       "border_mode": "same", "atrous_rate": 1}) == (
        "Conv1D", {"filters": 3, "kernel_size": [5], "strides": 2, "padding": "same",
                   "dilation_rate": 1},
    )  # fmt: skip
    assert translate("Merge", {"mode": "concat", "concat_axis": 1})[0] == "Concatenate"
    assert translate("Merge", {"mode": "sum"})[0] == "Add"
    assert translate("GRU", {"output_dim": 4, "inner_activation": "hard_sigmoid"}) == (
        "GRU",
        {"units": 4, "recurrent_activation": "hard_sigmoid", "reset_after": False},
    )
    assert translate("Dense", {"units": 3}) == ("Dense", {"units": 3})
