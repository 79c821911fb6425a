"""Filter images: each pixel is the Keras kernel's weight (RGB: channels as red, green, blue on
one scale for every model); other channel counts as one tile per channel."""

from __future__ import annotations

import numpy as np
import pytest
from wpipe import charts

from tests.charts.conftest import data_rows, tensor


def test_rgb_filters_are_the_first_conv_kernel_on_one_scale_across_models(con):
    spec = charts.filter_images(con, models=["k2_conv2d", "k3_conv2d"]).to_dict()
    kernels = {m: tensor(f"{m}.h5", "conv1", "kernel") for m in ("k2_conv2d", "k3_conv2d")}
    high = max(np.abs(k).max() for k in kernels.values())  # one scale for both models
    rows = data_rows(spec)
    assert len(rows) == sum(k.shape[0] * k.shape[1] * k.shape[3] for k in kernels.values())
    for r in rows:
        pixel = kernels[r["model"]][r["i"], r["j"], :, r["filter"]]
        want = np.round(255 * np.clip(0.5 + 0.5 * pixel / high, 0, 1)).astype(int)
        assert r["rgb"] == "#{:02x}{:02x}{:02x}".format(*want)
        assert [r["r"], r["g"], r["b"]] == pytest.approx(pixel.tolist(), rel=1e-6)
    assert spec["title"]["text"].startswith("conv1: first convolution filters (3×3, 3 input")


def test_other_channel_counts_draw_one_tile_per_channel(con):
    spec = charts.filter_images(con, models=["k2_conv2d"], layer="conv2").to_dict()
    kernel = tensor("k2_conv2d.h5", "conv2", "kernel")  # (3, 3, 4, 6)
    rows = data_rows(spec)
    assert len(rows) == kernel.size
    for r in rows:
        assert r["value"] == pytest.approx(kernel[r["i"], r["j"], r["channel"], r["filter"]])
    with pytest.raises(charts.NoData):
        charts.filter_images(con, models=["k2_lstm"])
