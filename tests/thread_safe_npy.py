"""Parse ``.npy`` headers one thread at a time, for processes that run many Flower sites as threads.

CPython 3.11's AST constructor is not safe when several threads use it at once: it can fail with
"SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). numpy parses
every ``.npy`` header with ``ast.literal_eval``, and Flower deserialises each array that way, so
the tests and the light-site benches, which run several sites as threads of one process, saw a
site's fit fail once in a few hundred sessions. A real site is its own process and the session
server deserialises in one thread, so only these processes need the lock.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy.lib.format

_LOCK = threading.Lock()
_parse = numpy.lib.format.safe_eval


def _locked_safe_eval(source: str) -> Any:
    with _LOCK:
        return _parse(source)


def install() -> None:
    """Make ``numpy.lib.format`` parse headers under one process-wide lock (idempotent)."""
    numpy.lib.format.safe_eval = _locked_safe_eval
