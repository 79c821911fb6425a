"""Weight anatomy's bounds: which tensors get per-slice rows, and how many."""

from __future__ import annotations

import numpy as np
import pytest
from wpipe.analyse import anatomy


def _groups(class_name: str, role: str, array: np.ndarray) -> list[anatomy.SliceGroup]:
    return anatomy.slice_groups(class_name, {}, role, role, "keras", array)


def test_normalisation_keeps_one_row_per_channel_of_its_scale_only():
    gamma = np.linspace(0.0, 1.0, 16).astype(np.float32)
    (group,) = _groups("BatchNormalization", "gamma", gamma)
    rows = list(anatomy.slice_stats(group, 1e-6))
    assert [r["max_abs"] for r in rows] == pytest.approx(np.abs(gamma).tolist())
    for role in ("beta", "moving_mean", "moving_variance"):
        assert _groups("BatchNormalization", role, gamma) == []


def test_one_value_per_unit_biases_have_no_slices_but_recurrent_biases_do():
    assert _groups("Conv2D", "bias", np.ones(8)) == []
    assert _groups("Dense", "bias", np.ones(8)) == []
    assert [g.axis for g in _groups("LSTM", "bias", np.ones(8))] == ["unit", "gate"]


def test_a_tensor_with_more_slices_than_the_cap_keeps_evenly_spaced_ones():
    kernel = np.random.default_rng(0).normal(size=(3, anatomy.MAX_SLICES * 2 + 1))
    (group,) = _groups("Dense", "kernel", kernel)
    assert group.index.size == anatomy.MAX_SLICES
    assert group.index[0] == 0 and group.index[-1] == kernel.shape[1] - 1
    rows = list(anatomy.slice_stats(group, 1e-6))
    want = np.linalg.norm(kernel[:, group.index], axis=0)
    assert [r["l2"] for r in rows] == pytest.approx(want.tolist())
    assert [r["index"] for r in rows] == group.index.tolist()
