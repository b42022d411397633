"""The live view of a site's training: a round bar and an epoch bar with the latest loss/accuracy.

Each finished epoch is also printed as a plain line above the bars, so a log or a pipe keeps
the whole story after the bars are gone.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from shared import protocol


class TrainingDisplay:
    """Context manager; pass ``approved`` and ``epoch_done`` to ``site_actions.train``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                 TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), console=console,
                                 refresh_per_second=2)
        self._rounds: TaskID | None = None
        self._epochs: TaskID | None = None
        self._local_epochs = 1

    def __enter__(self) -> TrainingDisplay:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def approved(self, ticket: protocol.SessionTicket) -> None:
        rounds = int(ticket.config.get("rounds", 1))
        self._local_epochs = int(ticket.config.get("local_epochs", 1))
        self.console.print(f"approved: session {ticket.session_id} on {ticket.host}:{ticket.port}, "
                           f"{rounds} round(s) x {self._local_epochs} local epoch(s); joining ...")
        self._rounds = self.progress.add_task("rounds", total=rounds, metrics="")
        self._epochs = self.progress.add_task("epochs", total=self._local_epochs, metrics="")
        self.progress.start()

    def epoch_done(self, round_number: int, epoch: int, loss: float, accuracy: float) -> None:
        metrics = f"loss {loss:.3f} acc {accuracy:.1%}"
        self.console.print(f"round {round_number} epoch {epoch}: {metrics}")
        if self._rounds is None or self._epochs is None:
            return
        self.progress.update(self._epochs, description=f"round {round_number} epochs", completed=epoch,
                             metrics=metrics)
        self.progress.update(self._rounds, completed=round_number - 1 + epoch / self._local_epochs,
                             metrics="")
