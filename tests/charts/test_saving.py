"""Saving charts: every format, offline HTML, escaping inside <script>."""

from __future__ import annotations

import json

import pytest
from wpipe import charts

# ----------------------------------------------------------------------------- save formats


def test_save_chart_writes_every_format(con, tmp_path):
    chart = charts.stat_heatmap(con, models=["k2_conv2d", "k3_conv2d"])
    spec = chart.to_dict()
    for name in ("h.vl.json", "h.json"):
        assert json.loads(charts.save_chart(chart, tmp_path / name).read_text()) == spec
    svg = charts.save_chart(chart, tmp_path / "h.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "conv1" in svg
    page = charts.save_chart(chart, tmp_path / "h.html").read_text()
    assert "window.vegaEmbed" in page  # the JavaScript is inlined: it opens offline
    assert "<script src" not in page and "<link" not in page
    with pytest.raises(ValueError, match="unknown chart format"):
        charts.save_chart(chart, tmp_path / "h.gif")


def test_html_escapes_model_supplied_names_inside_the_spec(tmp_path):
    evil = "</script><script>alert(1)</script>"
    spec = {"data": {"values": [{"name": evil}]}, "mark": "point"}
    text = charts.script_json(spec)
    assert "<" not in text and ">" not in text and json.loads(text) == spec
