"""Charts in Jupyter without the internet: an Altair renderer that inlines vl-convert's JavaScript.

Altair's default renderer loads Vega, Vega-Lite and vega-embed from a CDN, so every figure of
a notebook is blank offline. The `wpipe` renderer puts the bundle vl-convert ships (the one the
HTML files and the report inline) into each chart's output, guarded so that a page runs it
once: an output still draws when the notebook is reopened, or shown without the outputs
before it. `enable()` makes it the active renderer unless the user already chose another one.
"""

from __future__ import annotations

import itertools
from typing import Any

import altair as alt

from wpipe.charts.saving import EMBED_OPTIONS, javascript_bundle, script_json

RENDERER = "wpipe"
_ids = itertools.count(1)


def notebook_html(spec: dict[str, Any], embed_options: dict[str, Any] | None = None) -> str:
    """An HTML fragment drawing the Vega-Lite `spec` offline in a notebook's output area."""
    target = f"wpipe-vis-{next(_ids)}"
    options = {**EMBED_OPTIONS, **(embed_options or {})}
    # A function scope keeps the bundle's top-level names out of the page's global scope
    # (a second run would otherwise fail on its `const`s); it defines window.vegaEmbed.
    return f"""<div id="{target}"></div>
<script type="text/javascript">
if (!window.vegaEmbed) {{ (function () {{
{javascript_bundle()}
}})(); }}
window.vegaEmbed("#{target}", {script_json(spec)}, {script_json(options)}).catch(function (e) {{
  document.getElementById("{target}").textContent = "chart failed: " + e;
}});
</script>"""


def render(spec: dict[str, Any], **metadata: Any) -> dict[str, str]:
    """The Altair renderer: the chart as offline HTML, with a plain-text stand-in."""
    return {
        "text/html": notebook_html(spec, metadata.get("embed_options")),
        "text/plain": "<wpipe chart: shown as HTML in a notebook>",
    }


def enable(force: bool = False) -> None:
    """Make the offline renderer Altair's active one (unless another was chosen; `force`)."""
    if RENDERER not in alt.renderers.names():
        alt.renderers.register(RENDERER, render)
    if force or alt.renderers.active == "default":
        alt.renderers.enable(RENDERER)
