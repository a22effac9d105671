"""A transient progress bar on stderr for the CLI's long reads (`verify`, `diff --numeric`,
`convert --verify`): shown only when stderr is a terminal, so piped and JSON output stay clean."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Update = Callable[[str, int, int], None]  # (what, done, total), the core's progress callback


@contextmanager
def stderr_progress() -> Iterator[Update | None]:
    """The callback to hand the core, or None when nobody is watching stderr."""
    if not sys.stderr.isatty():
        yield None
        return
    bar = Progress(TextColumn("[bold]{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True)
    task: list[Any] = []  # started at the first update: a run that reports nothing shows no bar

    def update(what: str, done: int, total: int) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task(what, total=total))
        bar.update(task[0], description=what, completed=done, total=total)

    try:
        yield update
    finally:
        if task:
            bar.stop()
