"""What a long run tells the user on stderr: the progress bars of training (epoch, loss,
examples/s, last valid Recall@K) and one-line notes (a download, the ranks)."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LOGGED_WIDTH = 200


def output_console(stderr: bool = False) -> Console:
    """A rich console on stdout or stderr. Where that is no terminal (a log file, a pipe)
    and ``COLUMNS`` is unset, rich would wrap at 80 columns and squeeze wide tables
    unreadable: such output gets room for the widest table instead."""
    stream = sys.stderr if stderr else sys.stdout
    logged = stream is None or not stream.isatty()
    wide = logged and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=LOGGED_WIDTH if wide else None)


console = output_console(stderr=True)


def note(message: str) -> None:
    """One dim line on stderr (under torchrun, from the rank that does the thing told)."""
    console.print(f"[dim]{escape(message)}[/dim]", highlight=False)


class TrainingProgress:
    """Draws one bar for the epochs and one for the steps of the current epoch.

    Where stderr is no terminal (a log file, a pipe) a redrawn bar leaves
    nothing readable behind, so each epoch prints one line instead.
    """

    def __init__(self, epochs: int, headline: str, enabled: bool = True):
        self.headline = headline
        self.lines = enabled and not console.is_terminal
        self.total = epochs
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled or self.lines,
            transient=False,
        )
        self.epochs = self.progress.add_task("epochs", total=epochs, status="")
        self.steps = self.progress.add_task("steps", total=None, status="")

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.progress.stop()

    def step(self, done: int, total: int, loss: float) -> None:
        self.progress.update(self.steps, completed=done, total=total, status=f"loss {loss:.4f}")

    def epoch_done(self, entry: dict[str, Any]) -> None:
        status = (
            f"loss {entry['loss']:.4f}  {entry['examples_per_second']:,.0f} ex/s  "
            f"valid {self.headline} {entry['valid'][self.headline]:.4f}"
        )
        self.progress.update(self.epochs, advance=1, status=f"epoch {entry['epoch']}  {status}")
        if self.lines:
            line = f"epoch {entry['epoch']}/{self.total}  {status}  {entry['seconds']:.1f} s"
            console.print(line, highlight=False)
