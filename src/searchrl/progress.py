"""Progress bars with a rate and an ETA, written to stderr so ``--json`` stdout stays clean."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr_console = Console(stderr=True)


class _Rate(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        from rich.text import Text

        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"? {self.unit}/s", style="cyan")


@contextmanager
def progress_bar(description: str, total: int | None, *, unit: str = "it", disable: bool | None = None) -> Iterator:
    """Yield ``advance(n=1)``; shows done/total, items per second and time remaining.

    Disabled automatically when stderr is not a terminal unless ``SEARCHRL_PROGRESS=1``.
    """
    import os

    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("SEARCHRL_PROGRESS") == "1")
    if disable:
        yield lambda n=1: None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr_console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
