"""Peak resident memory of this process while a block runs, sampled by a thread (``psutil``).

``ru_maxrss`` only ever grows over a process's life, so it cannot tell one phase's peak from an
earlier one's; sampling every ``interval_s`` can, at the price of missing spikes shorter than
that (report it as "sampled peak").
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

MIB = 1 << 20


@dataclass
class Peak:
    """RSS when the block started and the highest sample while it ran, in bytes."""

    before: int = 0
    peak: int = 0

    def describe(self) -> str:
        return f"RSS {self.before / MIB:.0f} MiB before, sampled peak {self.peak / MIB:.0f} MiB"


@contextmanager
def peak_rss(interval_s: float = 0.02) -> Iterator[Peak]:
    """Yield a ``Peak`` that is filled in while the block runs and final when it ends."""
    process = psutil.Process()
    peak = Peak(before=process.memory_info().rss)
    peak.peak = peak.before
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak.peak = max(peak.peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()
        peak.peak = max(peak.peak, process.memory_info().rss)
