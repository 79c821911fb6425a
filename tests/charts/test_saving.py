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


def test_the_javascript_bundle_is_built_once_into_the_cache_folder(tmp_path, monkeypatch):
    import vl_convert
    from wpipe.charts import saving

    monkeypatch.setenv("WPIPE_CACHE_DIR", str(tmp_path))
    saving.javascript_bundle.cache_clear()
    try:
        built = saving.javascript_bundle()
        (cached,) = tmp_path.glob("vl-bundle-*.js")
        assert vl_convert.__version__ in cached.name
        assert cached.read_text(encoding="utf-8") == built and "vegaEmbed" in built
        assert "</script" not in built.lower()
        cached.write_text("/* kept */", encoding="utf-8")  # read back, not rebuilt
        saving.javascript_bundle.cache_clear()
        assert saving.javascript_bundle() == "/* kept */"
    finally:
        saving.javascript_bundle.cache_clear()
