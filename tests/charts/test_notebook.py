"""Charts in Jupyter: the active renderer inlines the JavaScript, so figures draw offline."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import altair as alt
import pytest
from wpipe import charts
from wpipe.charts import notebook

# A script that loads code from the network: a src attribute, or a URL of a .js file or a CDN
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=|https?://[^\s\"'`]*\.js\b|cdn\.|jsdelivr|unpkg")


def small_chart() -> alt.Chart:
    return alt.Chart(alt.Data(values=[{"a": 1}, {"a": 3}])).mark_point().encode(x="a:Q")


def test_importing_charts_makes_the_offline_renderer_active():
    assert alt.renderers.active == notebook.RENDERER
    bundle = small_chart()._repr_mimebundle_()
    page = bundle["text/html"]
    assert not REMOTE_SCRIPT.search(page)
    assert "window.vegaEmbed=" in page  # vl-convert's bundle, inlined
    assert charts.script_json(small_chart().to_dict()) in page


def test_a_chosen_renderer_is_kept_unless_forced():
    try:
        alt.renderers.enable("svg")
        notebook.enable()
        assert alt.renderers.active == "svg"
        notebook.enable(force=True)
        assert alt.renderers.active == notebook.RENDERER
    finally:
        notebook.enable(force=True)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the script")
def test_the_output_script_defines_vega_embed_once_and_draws_the_spec(tmp_path):
    spec = small_chart().to_dict()
    page = notebook.notebook_html(spec)
    script = re.search(r"<script[^>]*>(.*)</script>", page, re.S).group(1)
    (tmp_path / "out.js").write_text(script, encoding="utf-8")
    # Node has no DOM and no network: the first run must define vegaEmbed from the inlined
    # bundle alone; a second output on the same page must not run the bundle again and hands
    # the spec to vegaEmbed.
    runner = """
    const fs = require("fs");
    const code = fs.readFileSync(process.argv[1], "utf8");
    globalThis.window = globalThis;
    globalThis.document = { getElementById: () => ({}) };
    const first = code.replace(/window\\.vegaEmbed\\("#[^"]+", /, "(() => ({catch() {}}))(");
    new Function(first)();
    const defined = typeof window.vegaEmbed;
    let seen = null;
    window.vegaEmbed = (target, spec, options) => { seen = spec; return { catch() {} }; };
    new Function(code)();
    console.log(JSON.stringify({ defined, seen }));
    """
    run = subprocess.run(
        ["node", "-e", runner, str(tmp_path / "out.js")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["defined"] == "function"
    assert out["seen"] == spec
