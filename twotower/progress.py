"""The rich progress bar of a training run: epoch, loss, examples/s, last valid Recall@K."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


class TrainingProgress:
    """Draws one bar for the epochs and one for the steps of the current epoch."""

    def __init__(self, epochs: int, headline: str, enabled: bool = True):
        self.headline = headline
        self.enabled = enabled
        self.status = "loss -"
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
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
            f"epoch {entry['epoch']}  loss {entry['loss']:.4f}  "
            f"{entry['examples_per_second']:,.0f} ex/s  "
            f"valid {self.headline} {entry['valid'][self.headline]:.4f}"
        )
        self.progress.update(self.epochs, advance=1, status=status)
