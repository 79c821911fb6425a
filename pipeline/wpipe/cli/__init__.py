"""The `wpipe` command line: thin Typer commands over the API and the pipeline stages, one
module per family (ingest: ingest, compact, sync; browse: models, layers, query, schema,
health, spectra; compare: compare, correlate, metrics; figures: chart, report; activations).
A new command is a function in one of them (or a new module) and one `app.command` line below.

Exit codes: 0 success; 1 some model files could not be read (the rest were stored), or a
chart had nothing to draw; 2 usage error (bad option, unknown model, invalid SQL, a database
that is missing, locked or not wpipe's); 3 wpipe itself failed (a broken install or a bug: one
line says so, `--debug` shows the traceback). A reader that goes away (`wpipe models | head`)
ends the command quietly with click's exit code for it, 1.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from wpipe.cli import activations, browse, compare, figures, ingest, lineage
from wpipe.cli.common import EXIT_BUG, close_all, fail

# click's base of usage errors, whether Typer vendors click or depends on it
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class GuardedGroup(TyperGroup):
    """The top-level command group: an unexpected exception in any command becomes one line
    that names the command and says it is a bug (the traceback only with --debug)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click's main() ends quietly when the output's reader went away
        except Exception as exc:
            # Typer/click control flow (usage errors, --help, typer.Exit) is not an error here
            if _views_missing(exc):  # a broken install (wpipe.views is loaded if it raised)
                fail(str(exc), EXIT_BUG)
            if ctx.params.get("debug") or isinstance(exc, _CLICK_ERROR | typer.Exit | typer.Abort):
                raise
            command = ctx.invoked_subcommand or "wpipe"
            fail(
                f"wpipe {command} failed unexpectedly ({type(exc).__name__}: {exc}); this is a "
                "bug in wpipe: rerun with --debug for the traceback and report it",
                EXIT_BUG,
            )
        finally:
            close_all()


def _views_missing(exc: Exception) -> bool:
    views = sys.modules.get("wpipe.views")
    return views is not None and isinstance(exc, views.ViewsMissing)


app = typer.Typer(
    cls=GuardedGroup,
    pretty_exceptions_enable=False,
    help="Compare many trained Keras models by their weights: ingest, query, compare.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)


def _print_version(value: bool) -> None:
    if value:
        from wpipe import __version__

        sys.stdout.write(f"wpipe {__version__}\n")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error."),
) -> None:
    """Compare many trained Keras models by their weights: ingest, query, compare."""


app.command("ingest")(ingest.ingest_command)
app.command("compact")(ingest.compact_command)
app.command("sync")(ingest.sync_command)
app.command("models")(browse.models_command)
app.command("layers")(browse.layers_command)
app.command("query")(browse.query_command)
app.command("schema")(browse.schema_command)
app.command("health")(browse.health_command)
app.command("compare")(compare.compare_command)
metrics_app = typer.Typer(help="Attach validation results to models.", no_args_is_help=True)
metrics_app.command("add")(compare.metrics_add_command)
app.add_typer(metrics_app, name="metrics")
app.command("correlate")(compare.correlate_command)
app.command("chart")(figures.chart_command)
app.command("report")(figures.report_command)
app.command("spectra")(browse.spectra_command)
app.command("activations")(activations.activations_command)
app.add_typer(lineage.app, name="lineage")
