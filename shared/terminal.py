"""The Rich console every program prints to, and how an ``FLError`` is shown to a person.

Output that is not a terminal (a pipe, a script capturing it, a log) is laid out 100 columns
wide, or ``COLUMNS`` wide when set, instead of Rich's guess. Paths are never broken inside a
name: they are printed on lines of their own that Rich does not wrap (``print_unwrapped``),
never inside a table cell or title, which would fold them at the cell's width.
"""

from __future__ import annotations

import os

from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text

from shared.errors import FLError
from shared.plain_text import strip_control

#: Width of output that goes to a pipe or a file when ``COLUMNS`` is not set.
PIPE_COLUMNS = 100
#: Short cells that read badly when broken; every other column folds.
_NO_WRAP = {"req", "ver", "kind", "state", "sess", "rnd", "ep", "round", "decided", "when", "sha256"}


class _Console(Console):
    """Rich's console, except that a pipe gets ``PIPE_COLUMNS`` (or ``COLUMNS``), not 80."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self._width is not None or os.environ.get("COLUMNS", "").isdigit():
            return size
        return ConsoleDimensions(PIPE_COLUMNS, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


def make_console() -> Console:
    """A console that wraps to the terminal, or to ``COLUMNS``/100 columns in a pipe."""
    return _Console(highlight=False)


def print_error(console: Console, error: FLError) -> None:
    """``error: <message>`` and, when there is one, ``hint: <what to do>``; never a traceback."""
    console.print("[red]error:[/] ", end="", markup=True)
    console.print(str(error), markup=False, soft_wrap=True)
    if error.hint:
        console.print("[yellow]hint:[/] ", end="", markup=True)
        console.print(error.hint, markup=False, soft_wrap=True)


def print_unwrapped(console: Console, text: str) -> None:
    """A line that holds a path (or other text that must survive copy and paste): printed as
    is, never wrapped or folded by Rich, never read as markup."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def untrusted(text: str) -> Text:
    """Text a site (or a client's log line) chose, for a Rich table or print: shown literally,
    never parsed as markup, and without control characters (see ``shared.plain_text``)."""
    return Text(strip_control(text))


def narrow_table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    """A table whose long cells fold, so it stays readable in an 80-column pipe; numbers (the
    ``right``-aligned columns) never break.

    Keep paths out of ``title`` and cells (the title wraps at the table's width): print them
    with ``print_unwrapped`` beside the table.
    """
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in _NO_WRAP or column in right,
                         justify="right" if column in right else "left")
    return table
