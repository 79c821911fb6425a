"""Writing charts: Vega-Lite JSON, self-contained HTML, PNG and SVG, all offline (vl-convert)."""

from __future__ import annotations

import html
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import altair as alt


def vega_lite_version() -> str | None:
    """The Vega-Lite version Altair writes, as vl-convert names it (e.g. '6.4'), if it has it."""
    import vl_convert

    wanted = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    return wanted if wanted in vl_convert.get_vegalite_versions() else None


@lru_cache(maxsize=1)
def javascript_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (from vl-convert; no network).

    vl-convert builds the bundle in seconds, the same for one vl-convert and Vega-Lite
    version, so it is kept in wpipe's cache folder (docs: report) and built once."""
    import vl_convert

    version = vega_lite_version()
    cached = _cache_dir() / f"vl-bundle-{vl_convert.__version__}-{version or 'default'}.js"
    try:
        return cached.read_text(encoding="utf-8")
    except OSError:
        pass
    bundle = vl_convert.javascript_bundle(vl_version=version)
    # The bundle goes inside <script>; "</script" anywhere in it would end the element early.
    bundle = re.sub(r"</(script)", r"<\\/\1", bundle, flags=re.IGNORECASE)
    try:  # a read-only home only costs the rebuild next time
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(bundle, encoding="utf-8")
        tmp.replace(cached)
    except OSError:
        pass
    return bundle


def _cache_dir() -> Path:
    """WPIPE_CACHE_DIR, else $XDG_CACHE_HOME/wpipe, else ~/.cache/wpipe."""
    if os.environ.get("WPIPE_CACHE_DIR"):
        return Path(os.environ["WPIPE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wpipe"


def script_json(value: Any) -> str:
    """JSON that is safe inside an HTML <script> element: no '<', '>' or '&' characters."""
    text = json.dumps(value, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


EMBED_OPTIONS = {"actions": {"export": True, "source": True, "compiled": False, "editor": False}}


def chart_html(chart: alt.TopLevelMixin, title: str = "wpipe chart") -> str:
    """A self-contained HTML page drawing `chart` offline (the JavaScript is inlined)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<script>{javascript_bundle()}</script>
</head>
<body>
<div id="vis"></div>
<script type="application/json" id="spec">{script_json(chart.to_dict())}</script>
<script>
vegaEmbed("#vis", JSON.parse(document.getElementById("spec").textContent),
          {script_json(EMBED_OPTIONS)}).catch(function (e) {{
  document.getElementById("vis").textContent = "chart failed: " + e;
}});
</script>
</body>
</html>
"""


SAVE_FORMATS = (".vl.json", ".json", ".html", ".png", ".svg")
# C0 controls and DEL: vl-convert's text layout aborts the process on some of them (a layer
# named "d\x07"), so the PNG/SVG renderer gets their visible Unicode pictures (␇) instead.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _picture(match: re.Match) -> str:
    code = ord(match.group())
    return "\u2421" if code == 0x7F else chr(0x2400 + code)


def renderable(value: Any) -> Any:
    """`value` (a chart spec) with control characters in every string shown as pictures."""
    if isinstance(value, str):
        return _CONTROL.sub(_picture, value)
    if isinstance(value, dict):
        return {renderable(k): renderable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [renderable(v) for v in value]
    return value


def save_chart(chart: alt.TopLevelMixin, path: str | Path, scale: float = 2.0) -> Path:
    """Write `chart` to `path`; the format comes from the suffix (.vl.json/.json, .html, .png,
    .svg). PNG and SVG are rendered by vl-convert, with no browser and no network."""
    path = Path(path)
    name = path.name.lower()
    spec = chart.to_dict()  # validates against the Vega-Lite schema
    if name.endswith(".json"):
        path.write_text(json.dumps(spec, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    elif name.endswith(".html"):
        path.write_text(chart_html(chart, title=path.stem), encoding="utf-8")
    elif name.endswith(".png"):
        import vl_convert

        path.write_bytes(
            vl_convert.vegalite_to_png(
                renderable(spec), vl_version=vega_lite_version(), scale=scale
            )
        )
    elif name.endswith(".svg"):
        import vl_convert

        svg = vl_convert.vegalite_to_svg(renderable(spec), vl_version=vega_lite_version())
        path.write_text(svg, encoding="utf-8")
    else:
        raise ValueError(f"{path}: unknown chart format; use one of {', '.join(SAVE_FORMATS)}")
    return path
