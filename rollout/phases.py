"""Start-up phases: how long each part of a worker's constructor (or of the driver's start) took.

Workers (engine, learner rank, reward worker) and the driver keep one ``Phases`` each; the
driver writes them all to ``RUN_DIR/startup.json`` after the first step (``bench/startup.py``
prints them as a table). Marks are wall-clock times (``time.time()``), so the records of
processes on one machine line up on one time axis.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Phases:
    """``mark(name)`` ends the phase ``name``, begun at the previous mark (or at ``start``);
    ``add(name, began, seconds)`` records one that ran alongside (in another thread)."""

    def __init__(self, start: float | None = None):
        self.start = time.time() if start is None else start
        self.last = self.start
        self.parts: list[tuple[str, float, float]] = []  # (name, began: wall clock, seconds)

    def mark(self, name: str) -> None:
        now = time.time()
        self.parts.append((name, self.last, now - self.last))
        self.last = now

    def add(self, name: str, began: float, seconds: float) -> None:
        """A phase timed by the caller; the next ``mark`` starts when it and the last one ended."""
        self.parts.append((name, began, seconds))
        self.last = max(self.last, began + seconds)

    def record(self) -> dict:
        """{start, end (the last mark), phases: [name, began, seconds] in order of start}, JSON-ready."""
        parts = sorted(self.parts, key=lambda p: p[1])
        return {"start": self.start, "end": self.last, "phases": [[n, b, round(s, 3)] for n, b, s in parts]}


def process_start() -> float:
    """When this process started (wall clock): a command's start-up includes Python's own."""
    import psutil  # a Ray dependency

    return psutil.Process().create_time()


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off while a large package imports, then what the imports
    made frozen out of its generations (``gc.freeze``). Imports allocate hundreds of thousands of
    objects and free almost none of them, so each collection they trigger walks all of them in
    vain: torch + ``import vllm`` took 5.5 s without it against 7.1 s with it in a fresh process
    (``bench/imports.py``), and later collections (vLLM's engine start runs ``gc.collect()`` five
    times, 1.3 s over the imported objects) no longer walk them either. Only a block that imported
    something freezes: a second engine or learner rank in one process (a test, a bench) leaves the
    objects made since, the first one's among them, to the collector."""
    enabled, modules = gc.isenabled(), len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) > modules:
            gc.freeze()
        if enabled:
            gc.enable()
