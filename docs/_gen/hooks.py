"""MkDocs hooks: generated reference pages and figures (see pages.py).

A page asks for generated content with a marker line `<!-- generated: NAME -->` (NAME in
GENERATED); figures are drawn from the demo database — `WPIPE_DOCS_DB`, else `demo.duckdb` at
the repository's root (`make demo` writes it) — into docs/figures/*.svg (git-ignored but
drift.svg, which the README shows: the build redraws it, so a change shows in `git status`).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

sys.path.insert(0, str(Path(__file__).parent))
import pages

GENERATED = {
    "cli": pages.cli_reference,
    "tables": pages.tables_reference,
    "views": pages.views_reference,
    "settings": pages.settings_reference,
}
MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.M)
ROOT = Path(__file__).resolve().parents[2]


def demo_db() -> Path:
    db = Path(os.environ.get("WPIPE_DOCS_DB") or ROOT / "demo.duckdb")
    if not db.exists():
        raise PluginError(f"the docs draw their figures from {db}, which is missing: make demo")
    return db


def on_pre_build(config):
    # drawn into docs/figures/ (git-ignored) before MkDocs collects the pages' files, so the
    # pages and the README link to them as ordinary files
    pages.render_figures(demo_db(), Path(config["docs_dir"]) / "figures")


def on_page_markdown(markdown, page, config, files):
    def generate(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATED:
            raise PluginError(f"{page.file.src_uri}: unknown generated section {name!r}")
        return GENERATED[name]()

    return MARKER.sub(generate, markdown)
