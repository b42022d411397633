"""The live view of a site's training: backbone features, then a round bar and an epoch bar.

Each finished epoch is also printed as a plain line above the bars, so a log or a pipe keeps
the whole story after the bars are gone; feature extraction reports itself through
``shared.progress`` (bars on a terminal, quarter lines in a pipe).
"""

from __future__ import annotations

from rich.console import Console

from shared import protocol
from shared.progress import ProgressDisplay


class TrainingDisplay(ProgressDisplay):
    """Context manager; pass ``approved`` and ``epoch_done`` to ``site_actions.train``."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self._rounds = 1
        self._local_epochs = 1

    def approved(self, ticket: protocol.SessionTicket) -> None:
        self._rounds = int(ticket.config.get("rounds", 1))
        self._local_epochs = int(ticket.config.get("local_epochs", 1))
        self.console.print(f"approved: session {ticket.session_id} on {ticket.host}:{ticket.port}, "
                           f"{self._rounds} round(s) x {self._local_epochs} local epoch(s); joining ...")

    def epoch_done(self, round_number: int, epoch: int, loss: float, accuracy: float) -> None:
        metrics = f"loss {loss:.3f} acc {accuracy:.1%}"
        self.console.print(f"round {round_number} epoch {epoch}: {metrics}")
        rounds_done = round_number - 1 + epoch / self._local_epochs
        self.bar("rounds", rounds_done, self._rounds, f"{rounds_done:g}/{self._rounds}")
        self.bar("epochs", epoch, self._local_epochs, f"{epoch}/{self._local_epochs}",
                 label=f"round {round_number} epochs")
        self.note("epochs", metrics)
