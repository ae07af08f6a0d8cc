"""A bounded, thread-safe hand-off queue with a named drop policy and counters."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
DropPolicy = Literal["drop_oldest", "drop_newest", "block"]


class QueueClosed(Exception):
    """The queue was closed and is empty."""


@dataclass
class QueueStats:
    """Counters a queue keeps for telemetry."""

    put: int = 0
    got: int = 0
    dropped: int = 0
    high_water: int = 0


class BoundedQueue(Generic[T]):
    """Hands items from producer threads to consumer threads.

    ``drop_oldest`` keeps a live camera current (a stale frame is worth less than a new
    one); ``drop_newest`` keeps what was queued first; ``block`` applies back-pressure
    (a file played as fast as possible must lose nothing).
    """

    def __init__(self, name: str, maxsize: int, policy: DropPolicy) -> None:
        if maxsize < 1:
            raise ValueError("queue size must be >= 1")
        self.name = name
        self.maxsize = maxsize
        self.policy = policy
        self.stats = QueueStats()
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Queue ``item``; returns False if it (or an older item) was dropped, or on timeout."""
        with self._cond:
            if self._closed:
                raise QueueClosed(self.name)
            self.stats.put += 1
            if len(self._items) >= self.maxsize:
                if self.policy == "drop_newest":
                    self.stats.dropped += 1
                    return False
                if self.policy == "drop_oldest":
                    self._items.popleft()
                    self.stats.dropped += 1
                    self._items.append(item)
                    self._cond.notify()
                    return False
                if not self._cond.wait_for(
                    lambda: len(self._items) < self.maxsize or self._closed, timeout
                ):
                    self.stats.put -= 1
                    return False
                if self._closed:
                    raise QueueClosed(self.name)
            self._items.append(item)
            self.stats.high_water = max(self.stats.high_water, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> T | None:
        """Next item, or None on timeout. Raises QueueClosed once closed and drained."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout):
                return None
            if not self._items:
                raise QueueClosed(self.name)
            item = self._items.popleft()
            self.stats.got += 1
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; getters drain what is left, then see QueueClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> int:
        """Drop everything queued (counted as dropped); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self.stats.dropped += n
            self._cond.notify_all()
            return n

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
