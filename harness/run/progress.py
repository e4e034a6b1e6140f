"""Progress during long runs: a live bar on a terminal (rich), plain lines elsewhere (CI logs)."""

from __future__ import annotations

import os
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness.core.results import CellResult
from harness.core.summary import progress_line


class ProgressReporter(Protocol):
    def start(self, total: int) -> None: ...

    def update(self, result: CellResult, done: int, total: int) -> None: ...

    def stop(self) -> None: ...


class PlainProgress:
    """One line per finished cell: outcome, duration, id."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def start(self, total: int) -> None:
        pass

    def update(self, result: CellResult, done: int, total: int) -> None:
        print(progress_line(result, done, total), file=self.stream, flush=True)

    def stop(self) -> None:
        pass


class RichProgress:
    """A live bar: cells done of total, failures so far, elapsed and remaining time; failing
    cells are printed above it as they happen."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.failures = 0
        self._progress = Progress(
            TextColumn("cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failures]} failing"),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task: TaskID | None = None

    def start(self, total: int) -> None:
        self._task = self._progress.add_task("cells", total=total, failures=0)
        self._progress.start()

    def update(self, result: CellResult, done: int, total: int) -> None:
        if result.outcome.fails_run:
            self.failures += 1
            # plain text: a cell id's brackets are not rich markup
            self._progress.console.print(
                progress_line(result, done, total), markup=False, highlight=False
            )
        if self._task is not None:
            self._progress.update(self._task, completed=done, failures=self.failures)

    def stop(self) -> None:
        self._progress.stop()


def reporter_for(stream: TextIO) -> ProgressReporter:
    """The live bar on an interactive terminal; plain lines when output is a file, a pipe or a
    CI log (CI set)."""
    if stream.isatty() and not os.environ.get("CI"):
        return RichProgress(Console(file=stream))
    return PlainProgress(stream)
