"""The documentation site (docs/, mkdocs.yml): it builds in strict mode, its generated
reference covers every command, table and column, the README's links lead somewhere, and every
`console` and `sql` example of the pages runs against the demo database (`demo_db`,
tests/conftest.py) with the output it shows. The error-code page: tests/test_error_codes.py."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from docs._gen import pages

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# the hand-written pages (generated sections are filled in at build time)
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_gen" not in p.parts)
FENCE = re.compile(r"^```(console|sql)\n(.*?)^```$", re.M | re.S)
TIMEOUT = 120


@pytest.fixture(scope="session")
def site(demo_db, tmp_path_factory) -> Path:
    """The site as `make docs` builds it, figures drawn from the session's demo database."""
    out = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "WPIPE_DOCS_DB": str(demo_db), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _text(html: Path) -> str:
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", "", html.read_text()))


def test_the_site_builds_strict_with_every_page_and_figure(site):
    for page in PAGES:
        rel = page.relative_to(DOCS).with_suffix("")
        built = site / ("index.html" if rel.name == "index" else rel / "index.html")
        if rel.parent.name and rel.name == "index":
            built = site / rel.parent / "index.html"
        assert built.exists(), f"{page} was not built"
    for name in pages.FIGURES:
        svg = site / "figures" / name
        assert svg.exists() and svg.read_text().lstrip().startswith("<svg"), name


def test_the_cli_reference_lists_every_command_and_option(site):
    reference = _text(site / "reference" / "cli" / "index.html")
    commands = list(pages.cli_commands())
    assert len(commands) > 10
    for full, command, ctx in commands:
        assert f"wpipe {full}" in reference, full
        for param in command.get_params(ctx):
            for opt in getattr(param, "opts", []):
                if opt.startswith("-") and opt != "--help":
                    assert opt in reference, f"wpipe {full} {opt}"


def test_the_cli_reference_has_every_top_level_command():
    from wpipe.cli import app

    listed = {full for full, _, _ in pages.cli_commands()}
    registered = {c.name for c in app.registered_commands if not c.hidden}
    registered |= {g.name for g in app.registered_groups if not g.hidden}
    assert registered and registered <= listed


def test_the_tables_reference_documents_every_table_and_column(site):
    reference = _text(site / "reference" / "tables" / "index.html")
    for table in pages.contract_tables():
        assert f"{table.name} — one row per" in reference, table.name
        section = reference.split(f"{table.name} — one row per", 1)[1]
        for column in table.columns:
            assert f"\n{column.name}\n" in section or f" {column.name} " in section, (
                f"{table.name}.{column.name}"
            )


def test_the_views_reference_shows_every_view_file_and_view(site):
    reference = _text(site / "reference" / "views" / "index.html")
    for name, sql in pages.view_files():
        assert name in reference
        for _, defined in pages.defined_names(sql):
            assert defined in reference
    assert any(
        n == "health_findings"
        for _, n in pages.defined_names("\n".join(sql for _, sql in pages.view_files()))
    )


def test_the_readme_is_a_front_page_whose_links_lead_somewhere(site):
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for command in ("make demo", "make test"):
        assert command in readme
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert len(local) > 10
    for target in local:
        # the figures are drawn by the docs build (the `site` fixture has just drawn them)
        assert (ROOT / target).exists(), f"README links to {target}, which is missing"


def test_every_page_is_in_the_navigation():
    import yaml

    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    listed = set(re.findall(r"[\w./-]+\.md", str(config["nav"])))
    assert {str(p.relative_to(DOCS)) for p in PAGES} == listed


# --- The examples ----------------------------------------------------------------------------


def examples() -> list[tuple[str, str, str]]:
    """(page:line, kind, block) of every ```console and ```sql block of the pages."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{page.relative_to(DOCS)}:{line}", match.group(1), match.group(2)))
    return found


def console_steps(block: str) -> list[tuple[str, list[str]]]:
    """A console block as (command, output lines shown after it). A command goes on over the
    next lines while it ends in a backslash or a quote is open."""
    steps: list[tuple[str, list[str]]] = []
    pending = None
    for line in block.splitlines():
        if pending is not None:
            pending = pending.removesuffix("\\") + "\n" + line.strip()
        elif line.startswith("$ "):
            pending = line[2:]
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line)
            continue
        if not pending.endswith("\\") and _complete(pending):
            steps.append((pending, []))
            pending = None
    assert pending is None, f"unfinished command: {pending!r}"
    return steps


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # an open quote
        return False
    return True


def _normal(lines: list[str]) -> list[str]:
    return [" ".join(line.split()) for line in lines if line.strip()]


def test_the_pages_have_examples():
    kinds = [kind for _, kind, _ in examples()]
    assert kinds.count("console") >= 20 and kinds.count("sql") >= 8


# Commands an `sh` block may hold (it is not run): they write a database or read files, a
# bucket or a cluster that the demo does not have. Any other `wpipe` command belongs in a
# `console` block, which the tests run.
NOT_RUN = re.compile(
    r"wpipe (ingest|compact|sync|activations|metrics add|lineage (set|clear|show|agreement)"
    r"|query --write|report)\b|~/|s3://|runs\.duckdb|runs/|\bft_|samples\.npy"
)


def test_every_sh_example_needs_what_the_demo_does_not_have():
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"^```sh\n(.*?)^```$", text, re.M | re.S):
            for line in match.group(1).splitlines():
                command = line.removeprefix(".venv/bin/").strip()
                if command.startswith("wpipe ") and not NOT_RUN.search(command):
                    raise AssertionError(
                        f"{page.relative_to(DOCS)}: make it a console example: {line}"
                    )


def run_console(block: str, db: Path, cwd: Path) -> None:
    """Run a console block's wpipe commands in this process (the Typer app itself, without a
    new interpreter each), in `cwd`, the demo database standing for `demo.duckdb`."""
    from typer.testing import CliRunner
    from wpipe.cli import app

    env = {"WPIPE_DB": str(db)}
    for command, shown in console_steps(block):
        argv = shlex.split(command, comments=True)
        if argv[0] == "export":
            name, value = argv[1].split("=", 1)
            env[name] = str(db) if value == "demo.duckdb" else value
            continue
        assert argv[0] == "wpipe", f"a console example runs wpipe: {command}"
        redirect = argv[argv.index(">") + 1] if ">" in argv else None
        argv = argv[: argv.index(">")] if redirect else argv
        argv = [str(db) if a == "demo.duckdb" else _repo_path(a) for a in argv[1:]]
        result = CliRunner().invoke(app, argv, env=env)
        assert result.exit_code == 0, f"{command}\n{result.output}"
        if redirect:
            (cwd / redirect).write_text(result.stdout)
        if shown:
            assert _normal(result.stdout.splitlines()) == _normal(shown), command


def _repo_path(arg: str) -> str:
    return str(ROOT / arg) if arg.startswith("examples/") else arg


@pytest.mark.parametrize("where,kind,block", examples(), ids=[e[0] for e in examples()])
def test_example_runs_on_the_demo_database(where, kind, block, demo_db, tmp_path, monkeypatch):
    if kind == "sql":
        import wpipe

        con = wpipe.connect(str(demo_db))
        try:
            con.sql(block).fetchall()
        finally:
            con.close()
        return
    monkeypatch.chdir(tmp_path)  # the files the examples write (-o chart.svg) go there
    run_console(block, demo_db, tmp_path)
