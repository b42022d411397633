"""CPU time spent inside named stages of a running program, by wrapping the functions that make them.

``StageClock.wrap(owner, "name", "stage")`` replaces ``owner.name`` (a module function or a class
method) with a timed call. Time is the calling thread's CPU time (``time.thread_time``), not
wall time: in a program of many threads a function's wall time also counts the other threads
that held the interpreter lock meanwhile, which says nothing about the function. Time is
*exclusive*: while a wrapped function calls another wrapped one, the inner stage's time is not
also counted in the outer's, so stages add up, and they can be compared with the process's
whole CPU time. ``restore()`` puts every original back.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any


class StageClock:
    """Accumulated seconds per stage; ``snapshot()`` for per-interval differences."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._originals: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        function = original.__func__ if isinstance(original, staticmethod) else original
        timed = self._timed(function, stage)
        setattr(owner, name, staticmethod(timed) if isinstance(original, staticmethod) else timed)
        self._originals.append((owner, name, original))

    def restore(self) -> None:
        for owner, name, original in reversed(self._originals):
            setattr(owner, name, original)
        self._originals.clear()

    def snapshot(self) -> dict[str, float]:
        """Seconds so far per stage, and calls so far under ``"<stage> calls"``."""
        with self._lock:
            return {**self.totals, **{f"{stage} calls": float(n) for stage, n in self.calls.items()}}

    def _timed(self, function: Callable[..., Any], stage: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = self._stack()
            started = time.thread_time()
            stack.append(0.0)  # time spent in nested stages
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.thread_time() - started
                nested = stack.pop()
                if stack:
                    stack[-1] += elapsed
                with self._lock:
                    self.totals[stage] += elapsed - nested
                    self.calls[stage] += 1

        return timed

    def _stack(self) -> list[float]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        return self._local.stack
