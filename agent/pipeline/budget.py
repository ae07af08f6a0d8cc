"""The inference thread budget shared by all pipelines: a weighted, first-come-first-served
semaphore over interpreter threads.

Each pipeline has its own interpreter with ``threads`` threads. Running more interpreter
threads at once than there are cores makes every invoke slower and the streams unequal, so an
invoke holds ``threads`` units of the budget while it runs. Waiters are served in arrival order
(a plain ``threading.Semaphore`` wakes an arbitrary waiter, and one stream could starve), which
is what gives each stream its fair share of the model's time.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class ThreadBudget:
    """``total`` interpreter threads; ``hold(n)`` waits, in arrival order, until ``n`` are free."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("a thread budget needs at least one thread")
        self.total = total
        self._free = total
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self.waits = 0  # invokes that had to wait for threads (a sign the budget is the limit)

    @property
    def in_use(self) -> int:
        return self.total - self._free

    @contextmanager
    def hold(self, threads: int) -> Iterator[None]:
        """Hold ``threads`` units (capped at the total, so a pipeline larger than the budget
        still runs, alone) for the body of the ``with``."""
        need = min(max(threads, 1), self.total)
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            if self._queue[0] is not ticket or self._free < need:
                self.waits += 1
                while self._queue[0] is not ticket or self._free < need:
                    self._cond.wait()
            self._queue.popleft()
            self._free -= need
            self._cond.notify_all()  # the next in line may fit in what is left
        try:
            yield
        finally:
            with self._cond:
                self._free += need
                self._cond.notify_all()
