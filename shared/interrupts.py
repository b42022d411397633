"""Hold Ctrl-C back while a change that must not be cut in half runs (spawn + record a session).

Inside ``deferred_interrupt()`` a SIGINT is remembered instead of raised; it is raised as
``KeyboardInterrupt`` right after the block, so the menu still goes back, but only once the
store and the session processes agree with each other.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from prompt_toolkit.application.current import get_app_or_none


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread; nothing to hold back here
        return
    pending: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    previous = signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def exit_cleanly_on_termination() -> None:
    """SIGTERM/SIGHUP (``kill``, a closed terminal) become ``SystemExit`` so ``finally`` blocks run.

    While a questionary prompt is open, the prompt is ended with the exit instead: raised from
    inside prompt_toolkit's event loop, it would be reported as an unhandled exception.
    """
    def terminate(signum: int, frame: FrameType | None) -> None:
        app = get_app_or_none()
        if app is not None and app.is_running:
            app.exit(exception=SystemExit(128 + signum))
        else:
            sys.exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, terminate)
