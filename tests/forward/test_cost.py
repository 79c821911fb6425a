"""Compute per layer (forward.cost): output shapes, multiply-adds and output memory.

Expected values come from outside wpipe: the multiply-adds the architectures' papers (and
torchvision's model table) publish at 224×224, the output shapes Keras itself reported when it
built each model (tests/fixtures/make_cost_fixtures.py), and by-hand counts for small layers.
"""

from __future__ import annotations

import json
import math

import pytest
from wpipe.forward.cost import model_cost
from wpipe.readers import open_model

from tests.conftest import FIXTURES, MODELS, Warehouse

COST = FIXTURES / "cost"
TRUTH = json.loads((COST / "keras_truth.json").read_text())

# Published multiply-adds at 224×224 (per image): MobileNet, Howard et al. 2017, Table 8
# (569 M Mult-Adds); MobileNetV2, Sandler et al. 2018, Table 4 (300 M); VGG16, torchvision's
# model table (15.47 GFLOPS, counted as multiply-adds).
PUBLISHED = {"mobilenet": 569e6, "mobilenet_v2": 300e6, "vgg16": 15.47e9}


def _cost(name: str):
    with open_model(str(COST / f"{name}.h5")) as model:
        return model_cost(model)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_macs_equal_the_published_counts_within_one_percent(name):
    cost = _cost(name)
    assert cost.status == "ok"
    assert abs(cost.macs - PUBLISHED[name]) / PUBLISHED[name] < 0.01


def test_resnet50_matches_the_papers_figure_to_its_two_digits():
    # He et al. 2016, Table 1: 3.8 × 10^9 multiply-adds (Keras's ResNet50 is that v1 model)
    assert math.floor(_cost("resnet50").macs / 1e8) == 38


@pytest.mark.parametrize("name", sorted(TRUTH))
def test_output_shapes_equal_what_keras_reported(name):
    cost = _cost(name)
    shapes = TRUTH[name]["output_shapes"]
    compared = [n for n in shapes if n in cost.layers]
    assert len(compared) >= len(shapes) - 1  # the InputLayer has no call
    for layer in compared:
        assert cost.layers[layer].output_shape == shapes[layer], layer
        assert cost.layers[layer].output_bytes == 4 * math.prod(shapes[layer])


def test_small_layers_by_hand():
    with open_model(str(MODELS / "k3_conv2d.h5")) as model:  # 8×8×3 input
        cost = model_cost(model)
    # conv1 3×3 valid, 3→4: 6×6×4 outputs × 27; conv2 3×3, 4→6: 4×4×6 × 36; Dense 6→3
    assert cost.layers["conv1"].macs == 6 * 6 * 4 * 27
    assert cost.layers["conv2"].macs == 4 * 4 * 6 * 36
    assert cost.layers["bn"].macs == 0
    assert cost.layers["out"].macs == 6 * 3
    assert cost.macs == 6 * 6 * 4 * 27 + 4 * 4 * 6 * 36 + 18
    with open_model(str(MODELS / "k2_lstm.h5")) as model:  # Embedding(50, 8) → LSTM(6) → Dense(2)
        cost = model_cost(model)
    steps = cost.layers["embedding"].output_shape[0]
    assert cost.layers["embedding"].macs == 0
    assert cost.layers["lstm"].macs == steps * 4 * 6 * (8 + 6)
    assert cost.layers["dense"].macs == 6 * 2


def test_no_architecture_or_no_input_shape_is_null_with_the_reason(tmp_path):
    with open_model(str(MODELS / "k3_conv2d.weights.h5")) as model:
        cost = model_cost(model)
    assert (cost.macs, cost.status) == (
        None,
        "the file holds no architecture (weights only): nothing to run",
    )
    with open_model(str(MODELS / "arch" / "k3_custom_layer.h5")) as model:
        cost = model_cost(model)
    assert cost.macs is None and "custom" in cost.status


def test_ingest_stores_macs_per_layer_and_model(tmp_path):
    w = Warehouse(tmp_path)
    assert not w.ingest(MODELS / "k3_conv2d.h5").failed
    ((macs, status),) = w.query("SELECT macs, macs_status FROM models")
    assert (macs, status) == (6 * 6 * 4 * 27 + 4 * 4 * 6 * 36 + 18, "ok")
    rows = dict(w.query("SELECT layer_path, macs FROM layers"))
    assert rows["conv1"] == 6 * 6 * 4 * 27
    ((shown,),) = w.query("SELECT macs FROM model_summary")
    assert shown == macs
