"""The live view of active sessions: redrawn every second until a key press or Ctrl-C."""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console, RenderableType
from rich.live import Live

REFRESH_SECONDS = 1.0


def watch(console: Console, render: Callable[[], RenderableType], *, stdin: TextIO | None = None) -> None:
    """Show ``render()`` live until a key is pressed (on a terminal) or Ctrl-C is (anywhere)."""
    stream = stdin or sys.stdin
    with _single_keys(stream), Live(render(), console=console, auto_refresh=False) as live:
        while not _key_pressed(stream, REFRESH_SECONDS):
            live.update(render(), refresh=True)


@contextmanager
def _single_keys(stream: TextIO) -> Iterator[None]:
    """On a terminal, deliver key presses one by one without echo; Ctrl-C still raises."""
    if not stream.isatty():
        yield
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _key_pressed(stream: TextIO, timeout: float) -> bool:
    if not stream.isatty():
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([stream], [], [], timeout)
    if ready:
        os.read(stream.fileno(), 64)
    return bool(ready)
