"""The publish window of the durable outbox, as a sans-I/O state machine.

The database is the truth: records are committed before they are offered here. This
machine decides which committed records to hand to the MQTT client and when a record
counts as sent. Events go in as method calls; the actions to carry out come back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# When the outbox must drop undelivered records, the lowest priority goes first ([outbox.priorities]).
# count: the answers of a traffic site (one small record per line and minute), kept longest.
DEFAULT_PRIORITIES: Mapping[str, int] = {"count": 90, "event": 80, "result": 60, "shard": 40,
                                         "telemetry": 20}


@dataclass(frozen=True)
class FetchUnsent:
    """Read up to ``limit`` unsent records with ``id > after_id``, oldest first, and publish them."""

    after_id: int
    limit: int


@dataclass(frozen=True)
class MarkSent:
    """Record these outbox ids as delivered to the broker."""

    record_ids: tuple[int, ...]


Action = FetchUnsent | MarkSent


@dataclass
class PublishWindow:
    """Keeps at most ``window`` records in flight, in id order, while the broker is connected.

    After a disconnect the MQTT client retransmits what it holds in flight (same message
    ids), so the cursor is not rewound; after a restart the cursor starts at 0 and every
    unsent record goes out again, oldest first.
    """

    window: int = 100
    connected: bool = False
    cursor: int = 0
    has_unsent: bool = True
    in_flight: dict[int, int] = field(default_factory=dict)
    _records_in_flight: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("publish window must be >= 1")

    def _fill(self) -> list[Action]:
        free = self.window - len(self.in_flight)
        if self.connected and self.has_unsent and free > 0:
            return [FetchUnsent(self.cursor, free)]
        return []

    def on_connected(self) -> list[Action]:
        self.connected = True
        return self._fill()

    def on_disconnected(self) -> list[Action]:
        self.connected = False
        return []

    def on_committed(self, published: Sequence[int] = (), *, all_published: bool = False
                     ) -> list[Action]:
        """New records were committed to the outbox; ``published``: those of them the client
        took at once (live-first), in id order, ``all_published`` when that was all of them.

        With nothing else unsent, records all published at once need no fetch: the cursor
        moves past them (every commit comes through here, so nothing unsent lies between)."""
        if published and all_published and not self.has_unsent:
            self.cursor = max(self.cursor, published[-1])
            return []
        self.has_unsent = True
        return self._fill()

    def on_fetched(self, record_ids: list[int], *, exhausted: bool) -> list[Action]:
        """A FetchUnsent handed these ids to the client; ``exhausted``: no more were unsent."""
        if record_ids:
            self.cursor = max(self.cursor, record_ids[-1])
        if exhausted:
            self.has_unsent = False
        return []

    def on_requeued(self) -> list[Action]:
        """Records went back to unsent (no ingest ack in time): fetch again from the start."""
        self.cursor = 0
        self.has_unsent = True
        return self._fill()

    def on_rejected(self, message_ids: list[int]) -> list[Action]:
        """The broker refused these publishes; they stay unsent until the next start."""
        for m in message_ids:
            record = self.in_flight.pop(m, None)
            if record is not None:
                self._records_in_flight.discard(record)
        return self._fill()

    def on_published(self, message_id: int, record_id: int) -> list[Action]:
        """The MQTT client accepted ``record_id`` as ``message_id``."""
        self.in_flight[message_id] = record_id
        self._records_in_flight.add(record_id)
        return []

    def on_puback(self, message_ids: list[int]) -> list[Action]:
        """The broker acknowledged these message ids."""
        done = tuple(r for m in message_ids if (r := self.in_flight.pop(m, None)) is not None)
        self._records_in_flight.difference_update(done)
        actions: list[Action] = [MarkSent(done)] if done else []
        return actions + self._fill()

    def is_in_flight(self, record_id: int) -> bool:
        return record_id in self._records_in_flight

    @property
    def in_flight_count(self) -> int:
        return len(self.in_flight)
