"""The ingest consumer: a shared subscription on results, validated, stored idempotently.

Messages are acknowledged to the broker (manual PUBACK) only after the batch that holds
them is committed, so an ingest crash loses nothing: the broker redelivers to the
persistent session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as paho
from jsonschema import Draft202012Validator

from agent.backend.shards import parse_shard
from agent.backend.store import IngestedRecord, Store
from agent.core.acks import Ranges, encode_ack, to_ranges
from agent.core.topics import DeviceTopics, parse_topic, results_subscription
from agent.core.uri import BrokerUrl
from agent.errors import RecordRejected
from agent.schemas import load_schema
from agent.sync.mqtt import LinkOptions, MqttLink

log = logging.getLogger("agent.ingest")
MAX_PAYLOAD = 1 << 20


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    acks_sent: int = 0
    chunks: int = 0
    blobs_completed: int = 0
    last_reject: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class RecordValidator:
    """Checks a message on ``results``, ``sensors`` or ``events`` against its schema and topic."""

    SCHEMAS: ClassVar[dict[str, str]] = {"results": "result.v1", "sensors": "sensor.v1",
                                         "events": "event.v1"}

    def __init__(self) -> None:
        self._validators = {kind: Draft202012Validator(load_schema(name))
                            for kind, name in self.SCHEMAS.items()}

    def validate(self, topic: str, payload: bytes) -> IngestedRecord:
        try:
            parsed = parse_topic(topic)
        except ValueError as exc:
            raise RecordRejected(str(exc), topic=topic) from exc
        if parsed.kind not in self._validators:
            raise RecordRejected(f"not a record topic ({parsed.kind})", topic=topic)
        if len(payload) > MAX_PAYLOAD:
            raise RecordRejected(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}",
                                 topic=topic)
        try:
            text = payload.decode("utf-8")
            body = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordRejected(f"payload is not UTF-8 JSON: {exc}", topic=topic) from exc
        validator = self._validators[parsed.kind]
        error = next(iter(sorted(validator.iter_errors(body), key=lambda e: e.path)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            schema = self.SCHEMAS[parsed.kind].replace(".v", " v")
            raise RecordRejected(f"schema lepton.{schema} violated at {where}: {error.message}",
                                 topic=topic)
        # An event's stream is its own seq space ("{source}.events"); the topic names the source.
        topic_key = "source" if parsed.kind == "events" else "stream"
        for key, want in (("site", parsed.site), ("device", parsed.device),
                          (topic_key, parsed.stream)):
            if body[key] != want:
                raise RecordRejected(f"record {key} {body[key]!r} does not match topic ({want!r})",
                                     topic=topic)
        return IngestedRecord(body["device"], body["site"], body["stream"], int(body["seq"]),
                              body["ts"], text)


class Ingest:
    """Link handler that buffers valid records and commits them in batches."""

    def __init__(self, store: Store, subscription: str, name: str = "ingest",
                 shard_subscription: str | None = None,
                 extra_subscriptions: tuple[str, ...] = ()) -> None:
        self.store = store
        self.name = name
        self.subscription = subscription
        self.shard_subscription = shard_subscription
        self.extra_subscriptions = extra_subscriptions
        self._blob_acks: dict[tuple[str, str], tuple[set[str], dict[str, Ranges]]] = {}
        self.validator = RecordValidator()
        self.stats = IngestStats()
        self.link: MqttLink | None = None
        self.ready_file: Path | None = None
        self._batch: list[tuple[IngestedRecord, int, int]] = []
        self._wake = asyncio.Event()

    def on_connected(self, session_present: bool) -> None:
        assert self.link is not None
        if self.shard_subscription:
            self.link.subscribe(self.shard_subscription, qos=1)
        for topic in self.extra_subscriptions:
            self.link.subscribe(topic, qos=1)
        self.link.subscribe(self.subscription, qos=1)

    def on_subscribed(self, ok: bool) -> None:
        if ok and self.ready_file is not None and not self.ready_file.exists():
            self.ready_file.write_text(self.subscription + "\n")
        if ok:
            log.info("subscribed to %s", self.subscription)

    def on_disconnected(self, reason: str) -> None:
        # PUBACKs for the uncommitted batch cannot be sent on a dead connection; the
        # broker redelivers those messages and the store drops the duplicates.
        self.flush(ack=False)

    def on_puback(self, acked: list[int], rejected: list[tuple[int, str]]) -> None:
        pass

    def _rejected(self, message: paho.MQTTMessage, exc: RecordRejected) -> None:
        self.stats.rejected += 1
        self.stats.last_reject = str(exc)
        log.warning("rejected: %s", exc)
        self.store.reject(message.topic, exc.reason, bytes(message.payload))
        self._ack(message.mid, message.qos)

    def on_shard(self, message: paho.MQTTMessage) -> None:
        """A chunk or manifest: stored at once (chunks are large; no batching), then PUBACKed."""
        props = getattr(message.properties, "UserProperty", None) or []
        try:
            part = parse_shard(message.topic, list(props), bytes(message.payload))
            state = self.store.add_shard(part)
        except RecordRejected as exc:
            self._rejected(message, exc)
            return
        self.stats.chunks += part.index >= 0
        complete, held = self._blob_acks.setdefault((part.site, part.device), (set(), {}))
        if state.complete:
            if state.path is not None and part.blob not in complete:
                self.stats.blobs_completed += 1
            complete.add(part.blob)
            held.pop(part.blob, None)
        else:
            held[part.blob] = state.held
        self._ack(message.mid, message.qos)
        self._wake.set()

    def on_message(self, message: paho.MQTTMessage) -> None:
        self.stats.received += 1
        if "/shards/" in message.topic:
            self.on_shard(message)
            return
        try:
            record = self.validator.validate(message.topic, bytes(message.payload))
        except RecordRejected as exc:
            self._rejected(message, exc)
            return
        self._batch.append((record, message.mid, message.qos))
        self._wake.set()

    def _ack(self, mid: int, qos: int) -> None:
        if self.link is not None and qos > 0:
            self.link.ack(mid, qos)

    def flush(self, ack: bool = True) -> None:
        if not self._batch:
            self._acknowledge_to_devices([])
            return
        batch, self._batch = self._batch, []
        new = self.store.store([r for r, _, _ in batch])
        self.stats.stored += new
        self.stats.duplicates += len(batch) - new
        if ack:
            for _, mid, qos in batch:
                self._ack(mid, qos)
        self._acknowledge_to_devices([r for r, _, _ in batch])

    def _acknowledge_to_devices(self, records: list[IngestedRecord]) -> None:
        """Tell each device which of its (stream, seq) are stored (duplicates included)."""
        if self.link is None or not self.link.connected:
            return  # the device re-publishes after its ack timeout; we ack then
        per_device: dict[tuple[str, str], dict[str, list[int]]] = {}
        for r in records:
            per_device.setdefault((r.site, r.device), {}).setdefault(r.stream, []).append(r.seq)
        blob_acks, self._blob_acks = self._blob_acks, {}
        for (site, device) in per_device.keys() | blob_acks.keys():
            streams = per_device.get((site, device), {})
            complete, held = blob_acks.get((site, device), (set(), {}))
            payload = encode_ack({s: to_ranges(seqs) for s, seqs in streams.items()},
                                 ingest=self.name, blobs_complete=complete, blobs_held=held)
            self.link.publish(DeviceTopics(site, device).ack, payload, qos=1)
            self.stats.acks_sent += 1

    async def committer(self, stop: asyncio.Event, interval: float = 0.05) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                continue
            self._wake.clear()
            await asyncio.sleep(interval)
            self.flush()
        self.flush()


async def run_ingest(broker: BrokerUrl, store: Store, *, group: str | None = "ingest",
                     client_id: str | None = None, stop: asyncio.Event | None = None,
                     password: str | None = None, username: str | None = None,
                     ready_file: Path | None = None, reconnect_max_s: float = 5.0) -> IngestStats:
    """Consume results until ``stop`` is set (SIGTERM/SIGINT when run from the CLI)."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    cid = client_id or f"lepton-ingest-{group or 'solo'}-{socket.gethostname()}"
    ingest = Ingest(store, results_subscription(group), name=cid,
                    shard_subscription=results_subscription(group, "shards"),
                    extra_subscriptions=(results_subscription(group, "sensors"),
                                         results_subscription(group, "events")))
    ingest.ready_file = ready_file
    # A consumer reconnects quickly (at most reconnect_max_s apart): while it is away the
    # broker may drop what devices publish (mosquitto does not restore shared subscriptions).
    link = MqttLink(broker, LinkOptions(client_id=cid, manual_ack=True, username=username,
                                        password=password,
                                        reconnect_initial_s=0.2,
                                        reconnect_max_s=reconnect_max_s), ingest, loop)
    ingest.link = link
    link.start()
    started = time.monotonic()
    try:
        await ingest.committer(stop)
    finally:
        await link.stop(2.0)
        log.info("ingest stopped after %.1fs: %s", time.monotonic() - started, ingest.stats)
    return ingest.stats
