"""Keras 3 quantized Embedding tables read as Keras dequantizes them: the rows the reader
returns for the recorded token ids equal the outputs Keras computed for those ids."""

from __future__ import annotations

import numpy as np
import pytest
from wpipe.readers import open_model

from tests.forward.keras_cases import MODELS, expected

FILES = [f"{w}_quantized.{ext}" for w in ("k3", "k3j") for ext in ("keras", "h5")]


@pytest.mark.parametrize("fname", FILES)
@pytest.mark.parametrize(
    ("layer", "roles"),
    [
        ("q8_embed", {"embeddings", "embeddings_scale"}),
        ("q4_embed", {"embeddings", "embeddings_scale", "embeddings_zero", "g_idx"}),
    ],
)
def test_quantized_embedding_table_is_keras_lookup(fname: str, layer: str, roles: set) -> None:
    inputs, outputs = expected(fname.split(".")[0])
    ids = inputs[1]  # (x, ids)
    with open_model(MODELS / fname) as model:
        (found,) = [x for x in model.layers if x.layer_path == layer]
        by_role = {t.role: t for t in found.tensors}
        assert set(by_role) == roles
        table = by_role["embeddings"]
        assert table.quantization in ("int8", "int4") and table.dtype == "int8"
        assert not any(t.trainable for t in found.tensors)  # Keras: quantized tables are frozen
        np.testing.assert_allclose(
            np.asarray(table.load())[ids], outputs[f"{layer}:0:0"], rtol=1e-6, atol=1e-7
        )
