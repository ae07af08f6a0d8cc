"""Count buckets: per rule, kind, class and direction, in intervals aligned to wall-clock time.

The bucket a count lands in is chosen by its monotonic time plus a fixed wall-minus-monotonic
offset taken when the buckets are created (or restored), so a wall-clock step (NTP) neither
reorders nor splits buckets. A bucket is emitted when the monotonic clock passes its end; only
buckets that were open are emitted (one for an interval the agent was not running would claim
a zero count nobody measured). ``close(partial=True)`` emits the open bucket flagged partial.

The open bucket's state round-trips through :meth:`CountBuckets.to_json` and
:meth:`CountBuckets.from_json`, so the runtime can persist it with the outbox and a restart
neither loses nor doubles a count; a restored bucket is flagged partial (the agent did not see
all of its interval).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.core.analytics.events import Direction

STATE_VERSION = 1
KINDS = ("line", "zone")


@dataclass(frozen=True, order=True)
class CountKey:
    """What one count is of: ``kind`` is ``line`` or ``zone`` (a zone's entries are in, exits out)."""

    rule: str
    kind: str
    label: str
    direction: Direction

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"count key: kind {self.kind!r} is not one of {KINDS}")


@dataclass(frozen=True)
class CountRow:
    """One row of a closed bucket: a key and its count."""

    key: CountKey
    count: int


@dataclass(frozen=True)
class ClosedBucket:
    """A finished interval: ``start`` is wall-clock epoch seconds, rows sorted by key."""

    start: float
    seconds: float
    partial: bool
    counts: tuple[CountRow, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``bucket`` and ``counts`` members of a ``lepton.count`` record."""
        return {
            "bucket": {"start": self.start, "seconds": self.seconds, "partial": self.partial},
            "counts": [
                {"rule": r.key.rule, "kind": r.key.kind, "label": r.key.label,
                 "direction": r.key.direction.value, "count": r.count}
                for r in self.counts
            ],
        }


class CountBuckets:
    """The open bucket and the closed ones not yet taken by the caller."""

    def __init__(self, seconds: float, *, wall_now: float, mono_now: float) -> None:
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"count buckets: interval {seconds} s must be a positive number of seconds")
        self.seconds = seconds
        self._offset = wall_now - mono_now
        self._start: float | None = None  # wall-clock start of the open bucket
        self._partial = False
        self._counts: dict[CountKey, int] = {}
        self._closed: list[ClosedBucket] = []

    def bucket_of(self, mono: float) -> float:
        """Wall-clock start of the bucket that monotonic time ``mono`` falls in."""
        return math.floor((mono + self._offset) / self.seconds) * self.seconds

    def _roll(self, mono: float) -> None:
        start = self.bucket_of(mono)
        if self._start is not None and start > self._start:
            self._close_open(partial=self._partial)
        if self._start is None:
            self._start = start

    def _close_open(self, *, partial: bool) -> None:
        if self._start is None:
            return
        rows = tuple(CountRow(k, v) for k, v in sorted(self._counts.items()))
        self._closed.append(ClosedBucket(self._start, self.seconds, partial, rows))
        self._start, self._partial, self._counts = None, False, {}

    def add(self, key: CountKey, mono: float, n: int = 1) -> None:
        """Count ``n`` at monotonic time ``mono``; a later interval closes the open bucket first.

        A count earlier than the open bucket (which only a restore across a clock change can
        cause) lands in the open bucket rather than being dropped.
        """
        self._roll(mono)
        self._counts[key] = self._counts.get(key, 0) + n

    def advance(self, mono: float) -> list[ClosedBucket]:
        """Close the open bucket if ``mono`` is past its end; returns the buckets closed since last call."""
        self._roll(mono)
        closed, self._closed = self._closed, []
        return closed

    def close(self, *, partial: bool = True) -> list[ClosedBucket]:
        """Close the open bucket now (graceful stop); returns it and any not yet taken."""
        self._close_open(partial=partial or self._partial)
        closed, self._closed = self._closed, []
        return closed

    def open_counts(self) -> dict[CountKey, int]:
        """The open bucket's counts so far."""
        return dict(self._counts)

    @property
    def open_start(self) -> float | None:
        return self._start

    def to_json(self, extra: Mapping[CountKey, int] | None = None) -> str:
        """The open bucket (plus ``extra`` counts) and the closed ones not yet taken, as JSON text."""
        def rows(counts: dict[CountKey, int] | tuple[CountRow, ...]) -> list[list[Any]]:
            items = counts.items() if isinstance(counts, dict) else ((r.key, r.count) for r in counts)
            return [[k.rule, k.kind, k.label, k.direction.value, v] for k, v in sorted(items)]

        merged = dict(self._counts)
        for key, n in (extra or {}).items():
            merged[key] = merged.get(key, 0) + n

        return json.dumps({
            "version": STATE_VERSION,
            "seconds": self.seconds,
            "open": None if self._start is None else
            {"start": self._start, "partial": self._partial, "counts": rows(merged)},
            "closed": [
                {"start": b.start, "seconds": b.seconds, "partial": b.partial, "counts": rows(b.counts)}
                for b in self._closed
            ],
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, *, wall_now: float, mono_now: float) -> CountBuckets:
        """Restore :meth:`to_json`'s text against this process's clocks; ValueError says what is wrong."""
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {STATE_VERSION}")
            buckets = cls(float(data["seconds"]), wall_now=wall_now, mono_now=mono_now)

            def keyed(raw: list[list[Any]]) -> dict[CountKey, int]:
                return {CountKey(str(r), str(k), str(lb), Direction(d)): int(n) for r, k, lb, d, n in raw}

            for b in data["closed"]:
                counts = keyed(b["counts"])
                buckets._closed.append(ClosedBucket(
                    float(b["start"]), float(b["seconds"]), bool(b["partial"]),
                    tuple(CountRow(k, v) for k, v in sorted(counts.items()))))
            if data["open"] is not None:
                buckets._start = float(data["open"]["start"])
                buckets._partial = True  # the agent stopped inside this interval
                buckets._counts = keyed(data["open"]["counts"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"count buckets state: cannot restore ({exc}); it was not written by to_json"
            ) from exc
        return buckets
