"""A one-line progress display for commands that work for seconds without output (`report`,
`chart`): a spinner, the phase (query, render, write), what it is on, the time so far. Only
when stderr is a terminal; piped or redirected, nothing is printed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from wpipe.cli.common import console

Step = Callable[[str, str], None]


@contextmanager
def phases(first: str, detail: str = "") -> Iterator[Step]:
    """Show `first` now; the yielded `step(phase, detail)` moves the line on. The line is
    cleared when the block ends, whatever ended it."""
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    err = console(stderr=True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[phase]}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with progress:
        task = progress.add_task(escape(detail), phase=first, total=None)

        def step(phase: str, detail: str = "") -> None:
            progress.update(task, phase=phase, description=escape(detail))

        yield step
