"""Sub-layers from variable scopes (readers/scopes.py), classes and roles a weights file
without architecture implies (readers/inferred.py), and tied variables (readers/tied.py)."""

from __future__ import annotations

import numpy as np
import pytest
from wpipe.readers import open_model
from wpipe.readers.inferred import infer_class, layer_class, role_from_name, wrapped_config
from wpipe.readers.scopes import split_by_scope

from tests.conftest import write_legacy_h5


def test_hugging_face_scopes_become_sub_layers():
    names = ["tf_bert_model/bert/embeddings/word_embeddings/weight:0",
             "tf_bert_model/bert/pooler/dense/kernel:0",
             "tf_bert_model/bert/pooler/dense/bias:0"]  # fmt: skip
    owned = split_by_scope("bert", names)
    assert list(owned) == ["embeddings/word_embeddings", "pooler/dense"]
    assert owned["pooler/dense"][1] == (names[2], ["bias:0"])


@pytest.mark.parametrize(
    ("group", "names"),
    [
        ("dense_1", ["dense_1/kernel:0", "dense_1/bias:0"]),  # Keras 2
        ("conv2d_10", ["conv2d_10_1/kernel:0"]),  # TF1 uniquified
        ("shared", ["shared/shared/embeddings:0"]),  # a repeat of its own name
        ("lstm", ["lstm/lstm_cell/kernel:0"]),  # an RNN's cell is its own
        ("bidi", ["bidi/forward_lstm/lstm_cell/kernel:0", "bidi/backward_lstm/lstm_cell/bias:0"]),
        ("conv1/conv", ["conv1/conv/kernel:0"]),  # a layer name with a slash (DenseNet)
        ("dense", ["kernel", "bias"]),  # Keras 3.0-3.2: bare names
    ],
)
def test_one_layer_is_not_split(group, names):
    assert split_by_scope(group, names) is None


def test_nested_model_without_its_own_scope_splits_by_its_layers():
    owned = split_by_scope("sub", ["d_in/kernel:0", "bidi/forward_gru/gru_cell/kernel:0"])
    assert list(owned) == ["d_in", "bidi"]
    assert owned["bidi"][0][1] == ["forward_gru", "gru_cell", "kernel:0"]


@pytest.mark.parametrize(
    ("name", "variables", "cls"),
    [
        ("conv1d_1", [("kernel", (3, 6, 5)), ("bias", (5,))], "Conv1D"),
        (
            "batch_normalization_3",
            [("gamma", (4,)), ("beta", (4,)), ("moving_mean", (4,)), ("moving_variance", (4,))],
            "BatchNormalization",
        ),
        ("lstm_2", [("kernel", (5, 16)), ("recurrent_kernel", (4, 16)), ("bias", (16,))], "LSTM"),
        # a cuDNN bias (two per gate) whatever the name says
        (
            "lstm_2",
            [("kernel", (5, 16)), ("recurrent_kernel", (4, 16)), ("bias", (32,))],
            "CuDNNLSTM",
        ),
        ("rnn", [("kernel", (4, 9)), ("recurrent_kernel", (3, 9)), ("bias", (18,))], "CuDNNGRU"),
        ("rnn", [("kernel", (4, 9)), ("recurrent_kernel", (3, 9)), ("bias", (2, 9))], "GRU"),
        ("up", [("kernel", (3, 3, 8, 4)), ("bias", (8,))], "Conv2DTranspose"),
        ("c_attn", [("kernel", (8, 24)), ("bias", (1, 24))], "Dense"),  # GPT-2's Conv1D
        ("head", [("kernel", (8, 24)), ("bias", (7,))], None),  # the bias fits no kernel
        ("dense_3", [("kernel", (3, 3, 2, 4)), ("bias", (4,))], "Conv2D"),  # name does not fit
        ("layer_norm", [("gamma", (8,))], "LayerNormalization"),
        ("layers.0", [("gamma", (8,))], None),  # a lone scale of a custom layer
        ("time_distributed_1", [("kernel", (3, 2)), ("bias", (2,))], "TimeDistributed"),
    ],
)
def test_class_from_default_name_or_variables(name, variables, cls):
    assert infer_class(name, variables) == cls


def test_user_named_bidirectional_from_its_halves():
    gru = (("kernel", (4, 9)), ("recurrent_kernel", (3, 9)), ("bias", (2, 9)))
    halves = [(f"{d}/{r}", r, s) for d in ("forward", "backward") for r, s in gru]
    assert layer_class("bigru", halves) == "Bidirectional"
    assert wrapped_config("Bidirectional", halves) == {"layer": {"class_name": "GRU", "config": {}}}


@pytest.mark.parametrize(
    ("scope", "name", "shape", "want"),
    [
        ("word_embeddings", "weight", (40, 8), ("embeddings", "embeddings")),
        ("wte", "weight", (40, 8), ("embeddings", "embeddings")),
        ("c_attn", "weight", (8, 24), ("kernel", "kernel")),
        ("layer_norm", "weight", (8,), ("gamma", "gamma")),
        ("embeddings", "cls_token", (1, 1, 8), ("cls_token", "embeddings")),
        ("layers.0", "layer_scale_parameter", (4,), ("layer_scale_parameter", "gamma")),
        ("dense", "kernel", (4, 3), ("kernel", "kernel")),
    ],
)
def test_roles_from_names(scope, name, shape, want):
    assert role_from_name(scope, name, shape) == want


def test_equal_constant_variables_of_two_nested_models_are_not_joined(tmp_path):
    # two nested models each with a layer the user named `head`: equal zero biases, distinct
    # kernels; nothing says they are one variable
    rng = np.random.default_rng(0)
    path = write_legacy_h5(tmp_path / "m.h5", {
        "a": {"head/kernel:0": rng.normal(size=(3, 2)), "head/bias:0": np.zeros(2)},
        "b": {"head/kernel:0": rng.normal(size=(3, 2)), "head/bias:0": np.zeros(2)},
    })  # fmt: skip
    with open_model(path) as model:
        assert sum(t.size for x in model.layers for t in x.tensors) == 16
        assert not any(t.tied_sources for x in model.layers for t in x.tensors)


def test_a_layer_shared_by_two_nested_models_is_counted_once(tmp_path):
    rng = np.random.default_rng(1)
    shared = {"d/kernel:0": rng.normal(size=(3, 2)), "d/bias:0": rng.normal(size=2)}
    path = write_legacy_h5(tmp_path / "m.h5", {"a": dict(shared), "b": dict(shared)})
    with open_model(path) as model:
        assert [x.layer_path for x in model.layers] == ["a/d"]
        assert [t.tied_sources for t in model.layers[0].tensors] == [
            ("/model_weights/b/d/kernel:0",), ("/model_weights/b/d/bias:0",)]  # fmt: skip
