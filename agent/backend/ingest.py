"""The ingest consumer: a shared subscription on results (and sensors, events, counts, shards),
validated, stored idempotently.

Messages are acknowledged to the broker (manual PUBACK) only after the batch that holds
them is committed, so an ingest crash loses nothing: the broker redelivers to the
persistent session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import signal
import socket
import ssl
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import fastjsonschema
import paho.mqtt.client as paho
from jsonschema import Draft202012Validator

from agent.backend.decode import (
    BAD_COUNT,
    BAD_TOPIC,
    INTERNAL,
    PAYLOAD_KEPT,
    SCHEMA,
    SHARD,
    TOPIC_MISMATCH,
    UNSTORABLE,
    Reject,
    check_timestamp,
    clean,
    decode_json,
)
from agent.backend.shards import parse_shard
from agent.backend.store import IngestedRecord, Store, StoreUnavailable, Unstorable
from agent.backend.typed import decode_result
from agent.core.backoff import Backoff
from agent.core.contract.ack import Ranges, encode_ack, to_ranges
from agent.core.contract.count import count_from_json
from agent.core.contract.topics import (
    DeviceTopics,
    ParsedTopic,
    parse_topic,
    results_subscription,
)
from agent.core.uri import BrokerUrl
from agent.errors import ConfigError, RecordRejected, StorageError
from agent.schemas import load_schema
from agent.sync.mqtt import LinkOptions, MqttLink

log = logging.getLogger("agent.ingest")


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    """Rejected messages per reason code (see agent.backend.decode)."""
    acks_sent: int = 0
    chunks: int = 0
    blobs_completed: int = 0
    connects: int = 0
    last_reject: str | None = None
    commits: int = 0
    """Batches committed."""
    commit_s: float = 0.0
    """Seconds spent committing batches, all together (commit_s / commits: the mean)."""
    store_outages: int = 0
    """Times the database went away and ingest held its batch until it came back."""
    first_received_at: float | None = None
    """Wall time (time.time()) of the first message received (None: none)."""
    last_commit_at: float | None = None
    """Wall time of the last batch committed: with first_received_at, how long this process
    took for what it stored (bench ingest's rate, independent of start-up)."""
    lag_messages: int = field(default=0, repr=False)
    """Received, not yet committed (nor rejected): held in the batch, or while the database
    is away."""
    lag_since: float | None = field(default=None, repr=False)
    """Monotonic time the oldest of those was received (None: none)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["lag_messages"], out["lag_since"]
        return out

    def lag_oldest_s(self, now: float | None = None) -> float:
        """Age of the oldest message received and not yet committed (0: none)."""
        if self.lag_since is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.lag_since)

    def summary(self) -> str:
        """One log line: the counters, and each reject reason with its count."""
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejects.items())) or "none"
        return (f"received {self.received}, stored {self.stored}, duplicates {self.duplicates}, "
                f"rejected {self.rejected} ({reasons}), chunks {self.chunks}, "
                f"blobs {self.blobs_completed}, acks {self.acks_sent}")


class RecordValidator:
    """Checks a message on ``results``, ``sensors``, ``events`` or ``counts`` against its
    schema and topic."""

    SCHEMAS: ClassVar[dict[str, str]] = {"results": "result.v1", "sensors": "sensor.v1",
                                         "events": "event.v1", "counts": "count.v1"}

    def __init__(self) -> None:
        self._validators = {kind: Draft202012Validator(load_schema(name))
                            for kind, name in self.SCHEMAS.items()}
        # The same schemas compiled to Python code: a valid result checks in ~30 us instead
        # of ~400 us (jsonschema walks the schema per message; measured on 2,000 simulator
        # records: 33,900/s vs 2,490/s). jsonschema stays the reference: a record the
        # compiled check refuses is checked again by it, which names the reason (and wins
        # should the two ever disagree). tests/test_ingest_scale.py compares both on fuzz.
        self._fast = {kind: fastjsonschema.compile(load_schema(name), use_formats=False)
                      for kind, name in self.SCHEMAS.items()}

    def validate(self, topic: str, payload: bytes, typed: bool = True) -> IngestedRecord:
        """The record to store, or a :class:`Reject` naming why not.

        A result goes first through the typed decoder (agent.backend.typed), which accepts
        only what the reference checks accept too; anything it does not accept is judged by
        them (``typed=False``: always, the reference the tests compare with)."""
        try:
            parsed = _parse_topic(topic)
        except ValueError as exc:
            raise Reject(str(exc), topic=topic, code=BAD_TOPIC) from exc
        if parsed.kind not in self._validators:
            raise Reject(f"not a record topic ({parsed.kind})", topic=topic, code=BAD_TOPIC)
        if typed and parsed.kind == "results":
            result = decode_result(payload)
            if result is not None:
                _match_topic(topic, parsed, (("site", result.site), ("device", result.device),
                                             ("stream", result.stream)))
                return IngestedRecord(result.device, result.site, result.stream, result.seq,
                                      check_timestamp(result.ts, topic),
                                      payload.decode("utf-8"))
        text, body = decode_json(topic, payload)
        try:
            self._fast[parsed.kind](body)
            error = None
        except fastjsonschema.JsonSchemaException:
            validator = self._validators[parsed.kind]
            error = next(iter(sorted(validator.iter_errors(body), key=lambda e: e.path)), None)
        if error is not None:
            where = "/".join(clean(str(p), 64) for p in error.absolute_path) or "(root)"
            schema = self.SCHEMAS[parsed.kind].replace(".v", " v")
            raise Reject(f"schema lepton.{schema} violated at {where}: {clean(error.message, 300)}",
                         topic=topic, code=SCHEMA)
        # An event's or a count's stream is its own seq space ("{source}.events",
        # "{source}.counts"); the topic names the source.
        topic_key = "source" if parsed.kind in ("events", "counts") else "stream"
        _match_topic(topic, parsed, (("site", body["site"]), ("device", body["device"]),
                                     (topic_key, body[topic_key])))
        if parsed.kind == "counts":
            ts = check_timestamp(body["bucket"]["start"], topic, key="bucket.start")
            try:
                count = count_from_json(body).record
            except ValueError as exc:  # what the schema cannot say: alignment, repeated keys
                raise Reject(f"count record: {clean(str(exc), 300)}", topic=topic,
                             code=BAD_COUNT) from None
            return IngestedRecord(body["device"], body["site"], body["stream"],
                                  int(body["seq"]), ts, text, count)
        ts = check_timestamp(body["ts"], topic)
        return IngestedRecord(body["device"], body["site"], body["stream"], int(body["seq"]),
                              ts, text)


@functools.lru_cache(maxsize=65536)
def _parse_topic(topic: str) -> ParsedTopic:
    """parse_topic, remembered: a fleet's topics repeat (one per device and stream)."""
    return parse_topic(topic)


def _match_topic(topic: str, parsed: ParsedTopic, values: tuple[tuple[str, Any], ...]) -> None:
    """The record's site, device and stream (or source) are the topic's."""
    for (key, value), want in zip(values, (parsed.site, parsed.device, parsed.stream),
                                  strict=True):
        if value != want:
            raise Reject(f"record {key} {clean(repr(value), 80)} does not match topic "
                         f"({want!r})", topic=topic, code=TOPIC_MISMATCH)


Pending = tuple[IngestedRecord, int, int, str]  # record, mid, qos, topic


class Ingest:
    """Link handler that buffers valid records and commits them in batches.

    No message stops it: whatever cannot be stored goes to ``rejects`` with its reason and
    is acknowledged to the broker, so it never comes back."""

    def __init__(self, store: Store, subscription: str, name: str = "ingest",
                 shard_subscription: str | None = None,
                 extra_subscriptions: tuple[str, ...] = (), retry_store: bool = False) -> None:
        self.store = store
        self.retry_store = retry_store
        """A database that went away (StoreUnavailable): hold and reconnect (run_ingest), or
        stop with the error (False)."""
        self.name = name
        self.subscription = subscription
        self.subscriptions = [*([shard_subscription] if shard_subscription else []),
                              *extra_subscriptions, subscription]
        self._blob_acks: dict[tuple[str, str], tuple[set[str], dict[str, Ranges]]] = {}
        self.validator = RecordValidator()
        self.stats = IngestStats()
        self.link: MqttLink | None = None
        self.ready_file: Path | None = None
        self._batch: list[Pending] = []
        self._deferred: list[paho.MQTTMessage] = []
        """Messages received while the database is away, handled once it is back."""
        self.unavailable: StoreUnavailable | None = None
        self._retry_at = 0.0
        self._store_backoff = Backoff(0.2, 10.0)
        self._wake = asyncio.Event()
        self.failed: StorageError | None = None

    def on_connected(self, session_present: bool) -> None:
        assert self.link is not None
        self.stats.connects += 1
        # One SUBSCRIBE for all topics: one SUBACK says they are all in place.
        self.link.client.subscribe([(topic, 1) for topic in self.subscriptions])

    def on_subscribed(self, ok: bool) -> None:
        if not ok:
            return
        for topic in self.subscriptions:
            log.info("subscribed to %s", topic)
        if self.ready_file is not None and not self.ready_file.exists():
            self.ready_file.write_text("\n".join(self.subscriptions) + "\n")

    def on_disconnected(self, reason: str) -> None:
        # PUBACKs for the uncommitted batch cannot be sent on a dead connection; the
        # broker redelivers those messages and the store drops the duplicates.
        if self.failed is None:
            try:
                self.flush(ack=False)
            except StorageError as exc:
                self._fail(exc)

    def on_puback(self, acked: list[int], rejected: list[tuple[int, str]]) -> None:
        pass

    def _rejected(self, topic: str, payload: bytes, mid: int, qos: int, exc: RecordRejected,
                  ack: bool = True) -> None:
        """Keep the message in ``rejects`` (committed), count its reason, then acknowledge it."""
        code = getattr(exc, "code", SHARD)
        reason = clean(exc.reason)
        self.store.reject(topic, reason, payload[:PAYLOAD_KEPT])
        self.stats.rejected += 1
        self.stats.rejects[code] = self.stats.rejects.get(code, 0) + 1
        self.stats.last_reject = f"topic {clean(topic, 200)}: {reason}"
        log.warning("rejected (%s): %s", code, self.stats.last_reject)
        if ack:
            self._ack(mid, qos)

    def on_shard(self, message: paho.MQTTMessage) -> None:
        """A chunk or manifest: stored at once (chunks are large; no batching), then PUBACKed."""
        props = getattr(message.properties, "UserProperty", None) or []
        payload = bytes(message.payload)
        try:
            part = parse_shard(message.topic, list(props), payload)
            state = self.store.add_shard(part)
        except RecordRejected as exc:
            self._rejected(message.topic, payload, message.mid, message.qos, exc)
            return
        except Unstorable as exc:
            self._rejected(message.topic, payload, message.mid, message.qos,
                           Reject(f"the database refused it: {exc}", topic=message.topic,
                                  code=UNSTORABLE))
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
        if self.failed is not None:
            return  # not acknowledged: the broker redelivers it to the next start
        self.stats.received += 1
        if self.stats.first_received_at is None:
            self.stats.first_received_at = time.time()
        if self.unavailable is not None:
            # Not acknowledged, and kept: a broker resends an unacknowledged message only on
            # a new connection, so dropping it would leave it in flight until then.
            self._deferred.append(message)
            self._note_lag()
            return
        self._handle_safely(message)

    def _handle_safely(self, message: paho.MQTTMessage) -> None:
        try:
            self._handle(message)
        except StoreUnavailable as exc:  # a reject or a shard part could not be written
            if not self.retry_store:
                self._fail(exc)
                return
            self._deferred.append(message)
            self._went_away(exc)
        except StorageError as exc:
            self._fail(exc)
        self._note_lag()

    def _note_lag(self) -> None:
        lag = len(self._batch) + len(self._deferred)
        if lag and not self.stats.lag_messages:
            self.stats.lag_since = time.monotonic()
        elif not lag:
            self.stats.lag_since = None
        self.stats.lag_messages = lag

    def _went_away(self, exc: StoreUnavailable) -> None:
        """The database is away: hold what is received, unacknowledged, and retry."""
        if self.unavailable is None:
            log.error("%s; holding %d messages unacknowledged and reconnecting", exc,
                      len(self._batch) + len(self._deferred))
            self.stats.store_outages += 1
            self.unavailable = exc
        self._retry_at = time.monotonic() + self._store_backoff.next_delay()

    def _try_store_again(self) -> None:
        """Reconnect; once the database answers, commit the batch and handle what waited."""
        if time.monotonic() < self._retry_at:
            return
        try:
            self.store.reconnect()
        except StoreUnavailable as exc:
            self._went_away(exc)
            return
        log.info("the database is back: committing %d held records, handling %d messages",
                 len(self._batch), len(self._deferred))
        self.unavailable = None
        self._store_backoff.reset()
        self.flush()
        if self.unavailable is not None:
            return
        deferred, self._deferred = self._deferred, []
        for n, message in enumerate(deferred):
            if self.unavailable is not None:
                self._deferred.extend(deferred[n:])
                break
            self._handle_safely(message)
        self._note_lag()

    def _fail(self, exc: StorageError) -> None:
        """The database is unavailable: stop taking messages; the committer raises it."""
        if self.failed is None:
            log.error("%s", exc)
            self.failed = exc
        self._wake.set()

    def _handle(self, message: paho.MQTTMessage) -> None:
        topic, payload = message.topic, bytes(message.payload)
        try:
            if "/shards/" in topic:
                self.on_shard(message)
                return
            record = self.validator.validate(topic, payload)
        except RecordRejected as exc:
            self._rejected(topic, payload, message.mid, message.qos, exc)
            return
        except Exception as exc:  # a defect here must not block the broker's in-flight window
            log.debug("unexpected failure on a message", exc_info=True)
            self._rejected(topic, payload, message.mid, message.qos,
                           Reject(f"internal error: {clean(repr(exc), 300)}", topic=topic,
                                  code=INTERNAL))
            return
        self._batch.append((record, message.mid, message.qos, topic))
        self._wake.set()

    def _ack(self, mid: int, qos: int) -> None:
        if self.link is not None and qos > 0:
            self.link.ack(mid, qos)

    def flush(self, ack: bool = True) -> None:
        """Commit the batch, then acknowledge it to the broker and to the devices."""
        if not self._batch:
            self._acknowledge_to_devices([])
            return
        if self.unavailable is not None:
            return
        batch, self._batch = self._batch, []
        started = time.perf_counter()
        try:
            new = self.store.store([r for r, _, _, _ in batch])
            kept = batch
        except Unstorable:
            new, kept = self._store_one_by_one(batch, ack)
        except StoreUnavailable as exc:
            if not self.retry_store:
                raise
            self._batch = batch + self._batch
            self._went_away(exc)
            return
        self.stats.commits += 1
        self.stats.commit_s += time.perf_counter() - started
        self.stats.last_commit_at = time.time()
        self._note_lag()
        self.stats.stored += new
        self.stats.duplicates += len(kept) - new
        if ack:
            for _, mid, qos, _ in kept:
                self._ack(mid, qos)
        self._acknowledge_to_devices([r for r, _, _, _ in kept])

    def _store_one_by_one(self, batch: list[Pending], ack: bool) -> tuple[int, list[Pending]]:
        """A batch the database refused: store each record alone, reject the ones it refuses."""
        new, kept = 0, []
        for item in batch:
            record, mid, qos, topic = item
            try:
                new += self.store.store([record])
                kept.append(item)
            except Unstorable as exc:
                self._rejected(topic, record.payload.encode("utf-8", "backslashreplace"), mid,
                               qos, Reject(f"the database refused it: {exc}", topic=topic,
                                           code=UNSTORABLE), ack=ack)
        return new, kept

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

    async def committer(self, stop: asyncio.Event, interval: float = 0.05,
                        stats_interval: float = 60.0) -> None:
        next_stats = time.monotonic() + stats_interval
        logged = ""
        while not stop.is_set():
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + stats_interval
                line = self.stats.summary()
                if line != logged:
                    log.info("ingest: %s", line)
                    logged = line
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=min(0.5, stats_interval))
            except asyncio.TimeoutError:
                continue
            self._wake.clear()
            if self.failed is None:
                await asyncio.sleep(interval)
            if self.failed is not None:
                raise self.failed
            if self.unavailable is not None:
                self._try_store_again()
                self._wake.set()  # come back for the next attempt
                continue
            self.flush()
        if self.failed is not None:
            raise self.failed
        self.flush()


@dataclass(frozen=True)
class TlsFiles:
    """The CA that signs the broker's certificate, and this client's certificate and key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def check(self, broker: BrokerUrl) -> None:
        """Refuse, naming the flag and file, what the TLS connection could not load."""
        given = {f"--tls-{n}": p for n, p in (("ca", self.ca), ("cert", self.cert),
                                              ("key", self.key)) if p is not None}
        if given and not broker.tls:
            raise ConfigError(f"{', '.join(given)} given, but the broker URL is not mqtts://",
                              key="--broker", fix="use mqtts://HOST:8883 or drop the TLS flags")
        if self.key is not None and self.cert is None:
            raise ConfigError("a client key without a certificate", key="--tls-key",
                              fix="add --tls-cert FILE")
        for flag, path in given.items():
            if not path.is_file():
                raise ConfigError(f"{path} does not exist or is not a file", key=flag,
                                  fix="give the path of a PEM file")
        if not broker.tls:
            return
        try:
            context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load the CA certificate {self.ca}: {exc}",
                              key="--tls-ca", fix="give the CA's certificate in PEM") from None
        if self.cert is None:
            return
        try:
            context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load the client certificate {self.cert} with key "
                              f"{self.key or '(none)'}: {exc}", key="--tls-cert",
                              fix="--tls-cert takes the client's PEM certificate and --tls-key "
                                  "its unencrypted PEM key (the pair must match)") from None


def check_broker(broker: BrokerUrl, *, username: str | None = None,
                 password: str | None = None, tls: TlsFiles | None = None,
                 timeout: float = 5.0) -> tuple[bool, str]:
    """Whether the broker takes an MQTT 5 connection from ingest (CONNACK success), and one
    line saying so."""
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.sync.mqtt import tls_context

    result: list[str] = []
    done = threading.Event()

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any,
                   props: Any) -> None:
        result.append("" if not reason.is_failure else str(reason))
        done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=default_client_id("check"),
                         protocol=paho.MQTTv5)
    client.on_connect = on_connect
    if username:
        client.username_pw_set(username, password)
    try:
        if broker.tls:
            t = tls or TlsFiles()
            client.tls_set_context(tls_context(t.ca, t.cert, t.key))
        client.connect(broker.host, broker.port, keepalive=10)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return False, f"broker {broker}: unreachable: {exc}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return False, f"broker {broker}: no CONNACK within {timeout:g} s"
    finally:
        client.disconnect()
        client.loop_stop()
    if result[0]:
        return False, f"broker {broker}: refused the connection: {result[0]}"
    return True, f"broker {broker}: reachable (MQTT 5 connection accepted)"


RECEIVE_MAXIMUM = 1000
"""The MQTT 5 Receive Maximum ingest announces: messages the broker may have in flight to it.
PUBACKs leave after the batch's commit (every ~50 ms), so the window must hold what arrives
in that time; 1000 covers 20,000/s, more than one process takes (docs/backend.md)."""


class Incoming:
    """A PUBLISH as ingest reads it: what it uses of paho's MQTTMessage, without the rest."""

    __slots__ = ("dup", "mid", "payload", "properties", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, mid: int, qos: int, dup: bool,
                 retain: bool) -> None:
        self.topic, self.payload, self.mid, self.qos = topic, payload, mid, qos
        self.dup, self.retain = dup, retain
        self.properties: Any = None


def _read_publish(client: paho.Client) -> Any:
    """paho's ``_handle_publish`` for a QoS 1 PUBLISH without properties (every result):
    the packet read in place and handed to ``on_message`` as an :class:`Incoming`.

    paho builds a ``Properties`` object (~55 us), an ``MQTTMessage`` with a lock and a
    debug line for every PUBLISH: as much as all of ingest's own work on a result (cProfile,
    20,000 queued results: 5.5 s of 10.4 s in paho's publish handling). Anything else (QoS 0
    or 2, properties such as a shard's user properties or a topic alias, a topic that is not
    UTF-8) goes through paho's own handler."""
    packet = client._in_packet["packet"]
    header = client._in_packet["command"]
    if (header & 0x06) >> 1 == 1 and len(packet) > 4:
        end = 2 + int.from_bytes(packet[0:2], "big")
        if end + 2 < len(packet) and packet[end + 2] == 0:  # property length 0
            try:
                topic = packet[2:end].decode("utf-8")
            except UnicodeDecodeError:
                topic = ""
            if topic:
                client.on_message(client, None, Incoming(  # type: ignore[misc, arg-type]
                    topic, bytes(packet[end + 3:]), int.from_bytes(packet[end:end + 2], "big"),
                    1, bool(header & 0x08), bool(header & 0x01)))
                return paho.MQTT_ERR_SUCCESS
    return paho.Client._handle_publish(client)


class IngestLink(MqttLink):
    """The link with ingest's flow control: its CONNECT names a Receive Maximum, so the broker
    holds the rest of a burst in the session's queue (docs/broker/ingest.conf) rather than
    in this process's memory.

    Messages reach ingest straight from the read of the socket (no ``call_soon`` per message,
    ~10 us each), results without paho's per-message objects (:func:`_read_publish`)."""

    receive_maximum = RECEIVE_MAXIMUM

    def _make_client(self) -> Any:
        client = super()._make_client()
        client._handle_publish = functools.partial(_read_publish, client)  # type: ignore[method-assign]
        return client

    def _connect_properties(self) -> Any:
        props = super()._connect_properties()
        props.ReceiveMaximum = self.receive_maximum
        return props

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.handler.on_message(message)


def default_client_id(group: str | None) -> str:
    """A client id no other process uses: host, pid and a random suffix."""
    host = socket.gethostname().split(".")[0][:32] or "host"
    return f"lepton-ingest-{group or 'solo'}-{host}-{os.getpid()}-{secrets.token_hex(3)}"


async def run_ingest(broker: BrokerUrl, store: Store, *, group: str | None = "ingest",
                     client_id: str | None = None, stop: asyncio.Event | None = None,
                     password: str | None = None, username: str | None = None,
                     ready_file: Path | None = None, reconnect_max_s: float = 5.0,
                     tls: TlsFiles | None = None, stats_interval_s: float = 60.0,
                     metrics_listen: tuple[str, int] | None = None,
                     receive_maximum: int = RECEIVE_MAXIMUM) -> IngestStats:
    """Consume results until ``stop`` is set (SIGTERM/SIGINT when run from the CLI).

    With ``client_id`` the broker keeps the session (and its in-flight messages) across
    restarts; without one, the id is unique to this process and the session ends with it:
    a session nobody reconnects to would hold its share of the messages for a week."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    cid = client_id or default_client_id(group)
    ingest = Ingest(store, results_subscription(group), name=cid,
                    shard_subscription=results_subscription(group, "shards"),
                    extra_subscriptions=(results_subscription(group, "sensors"),
                                         results_subscription(group, "events"),
                                         results_subscription(group, "counts")),
                    retry_store=True)
    ingest.ready_file = ready_file
    tls = tls or TlsFiles()
    # A consumer reconnects quickly (at most reconnect_max_s apart): while it is away the
    # broker may drop what devices publish (mosquitto does not restore shared subscriptions).
    link = IngestLink(broker, LinkOptions(client_id=cid, manual_ack=True, username=username,
                                          password=password, tls_ca_file=tls.ca,
                                          tls_cert_file=tls.cert, tls_key_file=tls.key,
                                          reconnect_initial_s=0.2,
                                          reconnect_max_s=reconnect_max_s,
                                          clean_start=client_id is None,
                                          session_expiry_s=7 * 24 * 3600 if client_id else 0),
                      ingest, loop)
    link.receive_maximum = receive_maximum
    ingest.link = link
    metrics_server = None
    if metrics_listen:
        from agent.backend.metrics import serve_ingest_metrics

        metrics_server = serve_ingest_metrics(*metrics_listen, lambda: ingest.stats)
        log.info("ingest metrics on http://%s:%d/metrics", *metrics_listen)
    log.info("ingest %s: %s -> %s", cid, broker, store.describe())
    link.start()
    started = time.monotonic()
    try:
        await ingest.committer(stop, stats_interval=stats_interval_s)
    finally:
        await link.stop(2.0)
        if metrics_server is not None:
            metrics_server.shutdown()
        log.info("ingest stopped after %.1fs: %s", time.monotonic() - started,
                 ingest.stats.summary())
    return ingest.stats
