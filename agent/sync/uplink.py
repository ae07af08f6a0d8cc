"""The uplink: drives the outbox's publish window over an MqttLink (event-loop side)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import paho.mqtt.client as paho

from agent.core.contract.ack import decode_ack_full, within_published
from agent.core.contract.shard import shard_properties
from agent.core.outbox import Action, FetchUnsent, MarkSent, PublishWindow
from agent.storage.blobs import BlobStore
from agent.storage.outbox import Outbox, StoredRecord
from agent.sync.mqtt import MqttLink

log = logging.getLogger("agent.uplink")


LIVE_RESERVE = 32
FIRST_SENT_KEPT = 4096
"""Publish times kept for ack delay samples (the most recent records published once)."""


class AckTimeout:
    """How long a device waits for ingest's ack before it publishes a record again; the agent
    (``Housekeeping``) and the fleet simulator share it.

    At least ``base_s``. Acks that come, but late, mean a backend behind rather than lost
    records: the timeout is twice the smoothed delay from a record's only publish to its ack
    (a record published twice gives no sample: which publish was acked is unknown, Karn), so
    a backlog at ingest is not sent again (overload 3x for 20 s: 888,000 resends with the
    doubling alone, 435,000 with this; docs/backend.md). A whole timeout without any ack
    while records wait doubles it, at most once per timeout. Never above ``max_s``."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self.base_s = base_s
        self.max_s = max(max_s, base_s)
        self.timeout_s = base_s
        self.delay_s: float | None = None
        """Smoothed ack delay of records published once (None: none measured yet)."""
        self.last_ack = 0.0
        self.last_backoff = 0.0

    def sample(self, delay_s: float) -> None:
        """The ack delay of a record published once."""
        self.delay_s = delay_s if self.delay_s is None else 0.875 * self.delay_s + 0.125 * delay_s

    def acked(self, now: float) -> None:
        """Acks arrived (after their samples): the timeout follows the measured delay."""
        self.last_ack = now
        self.timeout_s = min(max(self.base_s, 2 * (self.delay_s or 0.0)), self.max_s)

    def resending(self, now: float) -> None:
        """Records are being published again: with no ack for a whole timeout, and none since
        the last doubling, back off."""
        if self.last_ack < now - self.timeout_s and now - self.last_backoff >= self.timeout_s:
            self.timeout_s = min(self.timeout_s * 2, self.max_s)
            self.last_backoff = now


class Uplink:
    """Publishes committed outbox records in order and marks them sent on PUBACK; in the
    bandwidth records leave, publishes blob chunks (a few in flight, records always first)."""

    def __init__(self, outbox: Outbox, window: PublishWindow, birth: tuple[str, bytes] | None = None,
                 ack_topic: str | None = None, blobs: BlobStore | None = None,
                 shard_topic: Callable[[str], str] | None = None, shard_window: int = 4):
        self.outbox = outbox
        self.window = window
        self.blobs = blobs
        self.shard_topic = shard_topic
        self.shard_window = shard_window
        self.shards_in_flight: dict[int, tuple[str, int]] = {}
        self.chunks_sent = 0
        self.blobs_completed = 0
        # PUBACKed ids not yet marked in the outbox: marked a window at a time, because each
        # small transaction rewrites whole pages (bench sync: 3.6 KB of disk per record). A
        # crash before the flush only means those records are published again.
        self._sent: list[int] = []
        self._sent_set: set[int] = set()
        self.birth = birth
        self.ack_topic = ack_topic
        self.ingested = 0
        self.bad_acks = 0
        self.acks_ignored = 0  # ack ranges beyond the seqs this device assigned
        self._acks_ignored_logged = -1e9
        self.link: MqttLink | None = None
        self.ack_timeout = AckTimeout(30.0, 300.0)
        """When ``Housekeeping`` publishes again what ingest has not acknowledged."""
        self._first_sent: dict[tuple[str, int], float | None] = {}
        """(stream, seq) -> monotonic time of its only publish (None: published again)."""
        self.published = 0
        self.acked = 0
        self.rejected = 0
        self.first_ack_at: float | None = None
        self.last_reject: str | None = None
        # Called after each PUBACK and ack: a graceful stop waits on it for the backlog to
        # drain instead of polling.
        self.on_progress: Callable[[], None] = lambda: None
        # Commands (agent.service.commands): subscribed to on each connect, handed over as is.
        self.command_filter: str | None = None
        self.on_command: Callable[[paho.MQTTMessage], None] | None = None
        # Other listeners (agent.service.homeassistant): each filter is subscribed to on each
        # connect and its messages handed over as is; ``connected_hooks`` run after the birth.
        self.listeners: list[tuple[str, Callable[[paho.MQTTMessage], None]]] = []
        self.connected_hooks: list[Callable[[], None]] = []

    def attach(self, link: MqttLink) -> None:
        self.link = link

    def _execute(self, actions: list[Action]) -> None:
        while actions:
            action = actions.pop(0)
            if isinstance(action, MarkSent):
                self._sent.extend(action.record_ids)
                self._sent_set.update(action.record_ids)
                if len(self._sent) >= self.window.window or self.window.in_flight_count == 0:
                    self.flush_sent()
                self.acked += len(action.record_ids)
                if self.first_ack_at is None:
                    self.first_ack_at = time.monotonic()
            elif isinstance(action, FetchUnsent):
                actions.extend(self._publish_unsent(action))
        self._pump_shards()

    def _pump_shards(self) -> None:
        if (self.blobs is None or self.shard_topic is None or self.link is None
                or not self.link.connected or self.window.has_unsent):
            return
        free = self.shard_window - len(self.shards_in_flight)
        if free <= 0:
            return
        for part in self.blobs.pending(free, exclude=set(self.shards_in_flight.values())):
            mid = self.link.publish(self.shard_topic(part.blob), part.data, qos=1,
                                    user_properties=shard_properties(part))
            if mid is None:
                break
            self.shards_in_flight[mid] = (part.blob, part.index)

    def blobs_added(self) -> None:
        """New blobs are waiting to be sent."""
        self._pump_shards()

    def _publish_unsent(self, action: FetchUnsent) -> list[Action]:
        if self.link is None:
            return []
        records = self.outbox.fetch_unsent(action.after_id, action.limit)
        examined: list[int] = []
        for rec in records:
            pending = not self.window.is_in_flight(rec.id) and rec.id not in self._sent_set
            if pending and not self._publish_record(rec):
                break
            examined.append(rec.id)
        exhausted = len(records) < action.limit and len(examined) == len(records)
        return self.window.on_fetched(examined, exhausted=exhausted)

    def _publish_record(self, rec: StoredRecord) -> bool:
        """Hand one record to the client and the window; False when the client took none."""
        assert self.link is not None
        mid = self.link.publish(rec.topic, rec.payload, qos=rec.qos)
        if mid is None:
            return False
        self.window.on_published(mid, rec.id)
        self.published += 1
        key = (rec.stream, rec.seq)
        if key in self._first_sent:
            self._first_sent[key] = None
        else:
            if len(self._first_sent) >= FIRST_SENT_KEPT:
                del self._first_sent[next(iter(self._first_sent))]
            self._first_sent[key] = time.monotonic()
        return True

    def committed(self, records: Sequence[StoredRecord] = ()) -> None:
        """New records are in the outbox (``records``: those just committed, as stored). They
        are published at once, ahead of any backlog, in up to ``LIVE_RESERVE`` slots beyond the
        window the backlog may use: after an outage live results are not held behind the
        catch-up."""
        published: list[int] = []
        if records and self.link is not None and self.link.connected:
            room = self.window.window + LIVE_RESERVE - self.window.in_flight_count
            for rec in records[:max(room, 0)]:
                if self.window.is_in_flight(rec.id) or rec.id in self._sent_set:
                    continue
                if not self._publish_record(rec):
                    break
                published.append(rec.id)
        self._execute(self.window.on_committed(published,
                                               all_published=len(published) == len(records)))

    def flush_sent(self) -> None:
        """Record the PUBACKed ids in the outbox."""
        if self._sent:
            sent, self._sent = self._sent, []
            self.outbox.mark_sent(sent)
            self._sent_set.clear()

    def requeued(self) -> None:
        """Unacknowledged records went back to unsent."""
        self.flush_sent()
        self._execute(self.window.on_requeued())

    def on_connected(self, session_present: bool) -> None:
        if self.link and self.ack_topic:
            self.link.subscribe(self.ack_topic, qos=1)
        if self.link and self.command_filter:
            self.link.subscribe(self.command_filter, qos=1, retain_as_published=True)
        if self.link:
            for topic_filter, _ in self.listeners:
                self.link.subscribe(topic_filter, qos=1)
        if self.link and self.birth:
            self.link.publish(self.birth[0], self.birth[1], qos=1, retain=True)
        for hook in self.connected_hooks:
            hook()
        self._execute(self.window.on_connected())

    def on_disconnected(self, reason: str) -> None:
        self._execute(self.window.on_disconnected())

    def on_puback(self, acked: list[int], rejected: list[tuple[int, str]]) -> None:
        if self.shards_in_flight:
            parts = [p for m in acked if (p := self.shards_in_flight.pop(m, None)) is not None]
            for m, _ in rejected:
                self.shards_in_flight.pop(m, None)
            if parts and self.blobs is not None:
                self.blobs.mark_sent(parts)
                self.chunks_sent += len(parts)
        if rejected:
            self.rejected += len(rejected)
            self.last_reject = rejected[-1][1]
            hint = ""
            if "not authorized" in self.last_reject.lower():
                # With the reference ACL (docs/broker/acl) a device may write only under its
                # own name: the certificate's (or user name's) must equal [agent] device_id.
                hint = ("; the broker's ACL refuses this device's topics: check that [agent] "
                        "device_id equals the name in its certificate or MQTT user name")
            log.error("broker rejected %d publish(es): %s; they stay in the outbox%s",
                      len(rejected), self.last_reject, hint)
            self._execute(self.window.on_rejected([m for m, _ in rejected]))
        if acked:
            self._execute(self.window.on_puback(acked))
        self.on_progress()

    def on_message(self, message: paho.MQTTMessage) -> None:
        if self.on_command is not None and self.command_filter is not None \
                and paho.topic_matches_sub(self.command_filter, message.topic):
            self.on_command(message)
            return
        for topic_filter, listener in self.listeners:
            if paho.topic_matches_sub(topic_filter, message.topic):
                listener(message)
                return
        if message.topic != self.ack_topic:
            log.debug("ignoring message on %s", message.topic)
            return
        try:
            ack = decode_ack_full(bytes(message.payload))
        except ValueError as exc:
            self.bad_acks += 1
            log.warning("ignoring malformed ack on %s: %s", message.topic, exc)
            return
        # Unknown streams have the outbox's seq floor as their last seq: nothing above it.
        streams, ignored = within_published(
            ack.streams, {s: self.outbox.last_seq(s) for s in ack.streams})
        if ignored:
            self._ignored_acks(ignored, ack.streams)
        now = time.monotonic()
        for stream, ranges in streams.items():
            self.ingested += self.outbox.mark_ingested(stream, ranges)
            self._sample_ack_delays(stream, ranges, now)
        if streams:
            self.ack_timeout.acked(now)
        if self.blobs is not None and (ack.blobs_complete or ack.blobs_held):
            self.blobs_completed += self.blobs.on_ack(ack.blobs_complete, ack.blobs_held)
            self._pump_shards()
        self.on_progress()

    def _sample_ack_delays(self, stream: str, ranges: list[tuple[int, int]], now: float) -> None:
        if not self._first_sent:
            return
        for lo, hi in ranges:
            if hi - lo >= FIRST_SENT_KEPT:  # wider than what is kept: look up what is kept
                seqs: Iterable[int] = [s for st, s in self._first_sent if st == stream
                                       and lo <= s <= hi]
            else:
                seqs = range(lo, hi + 1)
            for seq in seqs:
                sent = self._first_sent.pop((stream, seq), 0.0)
                if sent:
                    self.ack_timeout.sample(now - sent)

    def _ignored_acks(self, count: int, streams: dict[str, list[tuple[int, int]]]) -> None:
        self.acks_ignored += count
        now = time.monotonic()
        if now - self._acks_ignored_logged < 60:  # a flood of them is one line a minute
            return
        self._acks_ignored_logged = now
        beyond = ", ".join(f"{s} up to {top} (last seq {self.outbox.last_seq(s)})"
                           for s, r in sorted(streams.items())
                           if r and (top := max(hi for _, hi in r)) > self.outbox.last_seq(s))
        log.warning("ignoring %d ack range(s) on %s for seqs this device never assigned: %s; "
                    "%d so far. Only ingest should write this topic (see the broker ACLs in "
                    "docs/contract.md)", count, self.ack_topic, beyond, self.acks_ignored)

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing known to be unsent."""
        return (self.window.in_flight_count == 0 and not self.window.has_unsent
                and not self.shards_in_flight)
