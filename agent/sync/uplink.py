"""The uplink: drives the outbox's publish window over an MqttLink (event-loop side)."""

from __future__ import annotations

import logging
import time

import paho.mqtt.client as paho

from agent.core.acks import decode_ack
from agent.core.outbox import Action, FetchUnsent, MarkSent, PublishWindow
from agent.storage.outbox import Outbox
from agent.sync.mqtt import MqttLink

log = logging.getLogger("agent.uplink")


class Uplink:
    """Publishes committed outbox records in order and marks them sent on PUBACK."""

    def __init__(self, outbox: Outbox, window: PublishWindow, birth: tuple[str, bytes] | None = None,
                 ack_topic: str | None = None):
        self.outbox = outbox
        self.window = window
        self.birth = birth
        self.ack_topic = ack_topic
        self.ingested = 0
        self.bad_acks = 0
        self.link: MqttLink | None = None
        self.published = 0
        self.acked = 0
        self.rejected = 0
        self.first_ack_at: float | None = None
        self.last_reject: str | None = None

    def attach(self, link: MqttLink) -> None:
        self.link = link

    def _execute(self, actions: list[Action]) -> None:
        while actions:
            action = actions.pop(0)
            if isinstance(action, MarkSent):
                self.outbox.mark_sent(action.record_ids)
                self.acked += len(action.record_ids)
                if self.first_ack_at is None:
                    self.first_ack_at = time.monotonic()
            elif isinstance(action, FetchUnsent):
                actions.extend(self._publish_unsent(action))

    def _publish_unsent(self, action: FetchUnsent) -> list[Action]:
        if self.link is None:
            return []
        records = self.outbox.fetch_unsent(action.after_id, action.limit)
        examined: list[int] = []
        for rec in records:
            if not self.window.is_in_flight(rec.id):
                mid = self.link.publish(rec.topic, rec.payload, qos=rec.qos)
                if mid is None:
                    break
                self.window.on_published(mid, rec.id)
                self.published += 1
            examined.append(rec.id)
        exhausted = len(records) < action.limit and len(examined) == len(records)
        return self.window.on_fetched(examined, exhausted=exhausted)

    def committed(self) -> None:
        """New records are in the outbox."""
        self._execute(self.window.on_committed())

    def requeued(self) -> None:
        """Unacknowledged records went back to unsent."""
        self._execute(self.window.on_requeued())

    def on_connected(self, session_present: bool) -> None:
        if self.link and self.ack_topic:
            self.link.subscribe(self.ack_topic, qos=1)
        if self.link and self.birth:
            self.link.publish(self.birth[0], self.birth[1], qos=1, retain=True)
        self._execute(self.window.on_connected())

    def on_disconnected(self, reason: str) -> None:
        self._execute(self.window.on_disconnected())

    def on_puback(self, acked: list[int], rejected: list[tuple[int, str]]) -> None:
        if rejected:
            self.rejected += len(rejected)
            self.last_reject = rejected[-1][1]
            log.error("broker rejected %d publish(es): %s; they stay in the outbox",
                      len(rejected), self.last_reject)
            self._execute(self.window.on_rejected([m for m, _ in rejected]))
        if acked:
            self._execute(self.window.on_puback(acked))

    def on_message(self, message: paho.MQTTMessage) -> None:
        if message.topic != self.ack_topic:
            log.debug("ignoring message on %s", message.topic)
            return
        try:
            streams = decode_ack(bytes(message.payload))
        except ValueError as exc:
            self.bad_acks += 1
            log.warning("ignoring malformed ack on %s: %s", message.topic, exc)
            return
        for stream, ranges in streams.items():
            self.ingested += self.outbox.mark_ingested(stream, ranges)

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing known to be unsent."""
        return self.window.in_flight_count == 0 and not self.window.has_unsent
