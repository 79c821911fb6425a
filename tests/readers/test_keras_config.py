"""keras_config.model_tree drops Keras 3's shared_object_id (a Python id(), different on every
save) wherever it sits, however the JSON text spells the key."""

from __future__ import annotations

import json

import pytest
from wpipe.readers.keras_config import model_tree

CONFIG = {
    "class_name": "Sequential",
    "config": {"name": "m", "layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 3,
                                           "kernel_initializer": {"class_name": "GlorotUniform",
                                                                  "shared_object_id": 1234}}},
    ]},
}  # fmt: skip


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_shared_object_ids_are_dropped_with_or_without_the_text(ensure_ascii):
    text = json.dumps(CONFIG, ensure_ascii=ensure_ascii)
    escaped = text.replace("shared_object_id", "\\u0073hared_object_id")  # the same JSON
    assert json.loads(escaped) == CONFIG
    for raw in (None, text, escaped):
        _, (dense,) = model_tree(json.loads(raw or text), raw)
        assert dense.config["kernel_initializer"] == {"class_name": "GlorotUniform"}
        assert (dense.name, dense.class_name, dense.config["units"]) == ("d", "Dense", 3)


def test_a_config_without_object_ids_is_read_as_it_is():
    plain = json.loads(json.dumps(CONFIG).replace(', "shared_object_id": 1234', ""))
    text = json.dumps(plain)
    assert "shared_object_id" not in text
    assert model_tree(json.loads(text), text) == model_tree(json.loads(text))
