"""The Rich console both programs print to, and how an ``FLError`` is shown to a person."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared.errors import FLError
from shared.plain_text import strip_control

#: Short cells that read badly when broken; every other column folds.
_NO_WRAP = {"req", "ver", "kind", "state", "sess", "rnd", "ep", "round", "decided", "when", "sha256"}


def make_console() -> Console:
    """A console that wraps to the terminal, or to 80 columns in a pipe (Rich's default)."""
    return Console(highlight=False)


def print_error(console: Console, error: FLError) -> None:
    """``error: <message>`` and, when there is one, ``hint: <what to do>``; never a traceback."""
    console.print(f"[red]error:[/] {error}", markup=True)
    if error.hint:
        console.print(f"[yellow]hint:[/] {error.hint}")


def untrusted(text: str) -> Text:
    """Text a site (or a client's log line) chose, for a Rich table or print: shown literally,
    never parsed as markup, and without control characters (see ``shared.plain_text``)."""
    return Text(strip_control(text))


def narrow_table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    """A table whose long cells fold, so it stays readable in an 80-column pipe."""
    table = Table(title=title, title_justify="left", expand=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in _NO_WRAP,
                         justify="right" if column in right else "left")
    return table
