"""Progress of long steps: the code doing the work reports it, the program's display shows it.

Work deep in the stack (backbone features per image batch, a download's bytes) calls
``report(task, done, total, unit)``, which costs nothing when nobody listens, so no callback has
to be threaded through every layer in between. A command that may take more than a couple of
seconds opens a ``ProgressDisplay``: Rich bars on a terminal; in a pipe or a log, plain lines
(first step, every quarter, last step) that still read well after the fact.

The listener is a context variable: it is seen by the thread that opened the display (where
Keras calls its callbacks and the socket client downloads), not by unrelated threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from typing_extensions import Self

Listener = Callable[[str, float, float, str], None]

_listener: ContextVar[Listener | None] = ContextVar("progress_listener", default=None)


def report(task: str, done: float, total: float, unit: str = "") -> None:
    """``done`` of ``total`` (in ``unit``: "bytes", "batches", ...) of ``task``; no-op unless shown."""
    listener = _listener.get()
    if listener is not None:
        listener(task, done, total, unit)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send this thread's ``report`` calls to ``listener`` for the block."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def amount(done: float, total: float, unit: str) -> str:
    """``3/10 batches``, ``1.2/4.0 MB`` for bytes, ``...``/``done`` for a single step."""
    if total == 1 and unit == "step":
        return "done" if done >= 1 else "..."
    if unit == "bytes":
        return f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
    return f"{done:g}/{total:g}" + (f" {unit}" if unit else "")


class ProgressDisplay:
    """Context manager: shows every ``report`` made inside it, and ``update`` calls.

    ``bar`` updates a bar on a terminal only, for steps whose caller prints its own lines
    (the training display prints one line per epoch).
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                                 TextColumn("{task.fields[amount]}"), TextColumn("{task.fields[note]}"),
                                 TimeElapsedColumn(), console=console, refresh_per_second=4)
        self._tasks: dict[str, TaskID] = {}
        self._quarters: dict[str, int] = {}
        self._listening = listening(self.update)

    def __enter__(self) -> Self:
        self._listening.__enter__()
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live:  # Rich prints an empty line when stopping a never-started display in a pipe
            self.progress.stop()
        self._listening.__exit__(exc_type, exc, tb)

    def update(self, task: str, done: float, total: float, unit: str = "") -> None:
        """A bar on a terminal; otherwise a line at the first step, each quarter and the end."""
        if self.live:
            self.bar(task, done, total, amount(done, total, unit))
            return
        quarter = int(4 * done / total) if total > 0 else 4
        if task not in self._quarters or quarter > self._quarters[task]:
            self._quarters[task] = quarter
            self.console.print(f"{task}: {amount(done, total, unit)}", markup=False, highlight=False)

    def bar(self, task: str, done: float, total: float, text: str = "", *, label: str | None = None) -> None:
        """Set ``task``'s bar (created on first use); nothing when not on a terminal."""
        if not self.live:
            return
        if task not in self._tasks:
            self._tasks[task] = self.progress.add_task(label or task, total=total, amount="", note="")
        self.progress.update(self._tasks[task], completed=done, total=total, amount=text,
                             **({"description": label} if label else {}))

    def note(self, task: str, text: str) -> None:
        """Text after ``task``'s bar (the latest loss and accuracy)."""
        if self.live and task in self._tasks:
            self.progress.update(self._tasks[task], note=text)
