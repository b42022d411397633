"""The Rich console both programs print to, and how an ``FLError`` is shown to a person."""

from __future__ import annotations

from rich.console import Console

from shared.errors import FLError


def make_console() -> Console:
    """A console that wraps to the terminal, or to 80 columns in a pipe (Rich's default)."""
    return Console(highlight=False)


def print_error(console: Console, error: FLError) -> None:
    """``error: <message>`` and, when there is one, ``hint: <what to do>``; never a traceback."""
    console.print(f"[red]error:[/] {error}", markup=True)
    if error.hint:
        console.print(f"[yellow]hint:[/] {error.hint}")
