"""A transient progress bar on stderr for the CLI's long reads (`verify`, `diff --numeric`,
`convert --verify`): shown only when stderr is a terminal, so piped and JSON output stay clean."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Update = Callable[[str, int, int], None]  # (what, done, total), the core's progress callback


@contextmanager
def stderr_progress() -> Iterator[Update | None]:
    """The callback to hand the core, or None when nobody is watching stderr."""
    if not sys.stderr.isatty():
        yield None
        return
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("reading", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield update
