"""A fleet of virtual devices in one asyncio process, speaking the real contract to a broker.

Each device has its own MQTT 5 connection (an :class:`agent.sync.mqtt.MqttLink`, as the agent
uses) with a retained ``lepton.status`` birth and a last will, publishes ``lepton.result``
records built by the contract's encoder, a ``lepton.telemetry`` report now and then, and reads
its own ``ack`` topic. Like the agent with ``delivery = "ingested"`` it keeps every record until
ingest's ack names it, and publishes it again when no ack came within the ack timeout. When a
round of resends brings no ack back, the timeout doubles (up to ``ack_timeout_max_s``), so a
slow backend is not flooded with repeats. Acks that arrive, but later than the timeout, set
it to twice their smoothed delay (measured on records published once), so a backend that is
behind is not sent its backlog again.

What a run reports (:class:`FleetReport`): records offered, acknowledged, still pending, the
acks that named a record already acknowledged (duplicates ingest saw), resends, and, when the
caller gives a way to read the store, the records stored and the lost ones (acknowledged,
so dropped by the device, and not stored; what is still pending is reported as pending).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import paho.mqtt.client as paho

from agent.core.contract.ack import decode_ack
from agent.core.contract.result import Detection, FrameResult, ModelRef, encode_result
from agent.core.contract.status import encode_status
from agent.core.contract.telemetry import encode_telemetry
from agent.core.contract.topics import DeviceTopics
from agent.core.uri import BrokerUrl
from agent.sync.mqtt import LinkOptions, MqttLink, Will
from agent.sync.uplink import AckTimeout

LABELS = ("car", "truck", "bus", "person", "bicycle")
MODEL = ModelRef("lepton-vehicles-tiny", "1.0.0", "9f2c4e6a" * 8)
STREAM = "cam0"


@dataclass(frozen=True)
class FleetOptions:
    """How the fleet behaves. ``rate`` is records per second per device."""

    devices: int
    rate: float
    seconds: float
    backlog: int = 0
    site: str = "sim"
    prefix: str = "sim"
    ack_timeout_s: float = 5.0
    ack_timeout_max_s: float = 60.0
    window: int = 100
    """Records a device has published and the broker has not yet PUBACKed (the agent's window)."""
    telemetry_s: float = 10.0
    drain_s: float = 60.0
    """After the last record is offered, how long to wait for the acks of what is pending."""
    seed: int = 1


@dataclass
class FleetReport:
    """What one run did; ``stored`` and ``lost`` are None when no store was read."""

    devices: int
    offered: int = 0
    published: int = 0
    resent: int = 0
    acknowledged: int = 0
    pending: int = 0
    duplicates_seen: int = 0
    """Acks naming a record this device already had acknowledged: ingest saw it again."""
    acks_received: int = 0
    offer_s: float = 0.0
    catch_up_s: float | None = None
    """From the last record offered until every record was acknowledged (None: not within
    ``drain_s``)."""
    stored: int | None = None
    lost: int | None = None
    """Acknowledged by ingest (so dropped by the device) and not in the store."""
    duplicates_stored: int | None = None
    connects: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Record:
    payload: bytes
    sent_at: float = 0.0
    """Monotonic time of the last publish (0: queued, not published yet)."""
    sends: int = 0


@dataclass
class VirtualDevice:
    """One device: its link, its records not yet acknowledged, its ack timeout."""

    name: str
    topics: DeviceTopics
    fleet: FleetOptions
    rng: random.Random
    report: FleetReport
    link: MqttLink | None = None
    next_seq: int = 1
    unsent: OrderedDict[int, _Record] = field(default_factory=OrderedDict)
    sent: OrderedDict[int, _Record] = field(default_factory=OrderedDict)
    acked: set[int] = field(default_factory=set)
    inflight: set[int] = field(default_factory=set)
    """mids published and not yet PUBACKed by the broker."""
    timer: AckTimeout = field(default_factory=lambda: AckTimeout(5.0, 60.0))
    """When to publish again: the agent's policy (agent.sync.uplink.AckTimeout)."""

    def make_record(self, wall: float) -> None:
        """A new result record, queued for publishing."""
        seq = self.next_seq
        self.next_seq += 1
        rng = self.rng
        dets = []
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            y, x = rng.random() * 0.8, rng.random() * 0.8
            k = rng.randrange(len(LABELS))
            dets.append(Detection(k, LABELS[k], rng.uniform(0.3, 0.99),
                                  (y, x, y + rng.random() * 0.2, x + rng.random() * 0.2)))
        frame = FrameResult(STREAM, seq, wall, time.monotonic_ns(), 640, 480, "detection", dets,
                            latency_ms={"invoke": rng.uniform(20, 40)})
        payload = encode_result(frame, seq=seq, device=self.topics.device, site=self.topics.site,
                                model=MODEL)
        self.unsent[seq] = _Record(payload)
        self.report.offered += 1

    # -- link handler -----------------------------------------------------------------------

    def on_connected(self, session_present: bool) -> None:
        assert self.link is not None
        self.report.connects += 1
        self.link.subscribe(self.topics.ack, qos=1)
        self.link.publish(self.topics.status, encode_status(
            state="online", device=self.topics.device, site=self.topics.site,
            wall_time=time.time()), qos=1, retain=True)
        # What was in flight on the lost connection is published again (the broker may not
        # have it); what was PUBACKed stays in ``sent`` until ingest's ack or the timeout.
        self.inflight.clear()

    def on_disconnected(self, reason: str) -> None:
        self.inflight.clear()

    def on_puback(self, acked: list[int], rejected: list[tuple[int, str]]) -> None:
        self.inflight.difference_update(acked)
        self.inflight.difference_update(m for m, _ in rejected)

    def on_message(self, message: paho.MQTTMessage) -> None:
        if message.topic != self.topics.ack:
            return
        try:
            streams = decode_ack(bytes(message.payload))
        except ValueError:
            return
        self.report.acks_received += 1
        progress = False
        for lo, hi in streams.get(STREAM, []):
            for seq in range(lo, min(hi, self.next_seq - 1) + 1):
                if seq in self.acked:
                    self.report.duplicates_seen += 1
                    continue
                record = self.sent.pop(seq, None) or self.unsent.pop(seq, None)
                if record is None:
                    continue
                if record.sends == 1:  # a resent record's delay is ambiguous (Karn)
                    self.timer.sample(time.monotonic() - record.sent_at)
                self.acked.add(seq)
                self.report.acknowledged += 1
                progress = True
        if progress:
            self.timer.acked(time.monotonic())

    # -- sending ----------------------------------------------------------------------------

    def pump(self, now: float) -> None:
        """Resend what timed out, then publish queued records within the window."""
        link = self.link
        if link is None or not link.connected:
            return
        if self.sent:
            oldest = next(iter(self.sent.values()))
            timeout = self.timer.timeout_s
            if now - oldest.sent_at >= timeout:
                expired = [s for s, r in self.sent.items() if now - r.sent_at >= timeout]
                for seq in expired:
                    self.unsent[seq] = self.sent.pop(seq)
                    self.unsent.move_to_end(seq, last=False)
                self.report.resent += len(expired)
                self.timer.resending(now)
        topic = self.topics.results(STREAM)
        while self.unsent and len(self.inflight) < self.fleet.window:
            seq, record = self.unsent.popitem(last=False)
            mid = link.publish(topic, record.payload, qos=1)
            if mid is None:
                self.unsent[seq] = record
                self.unsent.move_to_end(seq, last=False)
                return
            self.inflight.add(mid)
            record.sent_at = now
            record.sends += 1
            self.sent[seq] = record
            self.report.published += 1

    def telemetry(self) -> None:
        if self.link is not None and self.link.connected:
            self.link.publish(self.topics.telemetry, encode_telemetry(
                device=self.topics.device, site=self.topics.site, wall_time=time.time(),
                health={"backlog": len(self.sent) + len(self.unsent)}), qos=0)

    @property
    def pending(self) -> int:
        return len(self.sent) + len(self.unsent)


StoredSeqs = Callable[[str, list[str]], dict[str, set[int]]]
"""Reads the store: (site, device names) -> the seqs stored per device."""


async def run_fleet(broker: BrokerUrl, options: FleetOptions,
                    stored_seqs: StoredSeqs | None = None,
                    stop: asyncio.Event | None = None,
                    on_offered: Callable[[FleetReport], None] | None = None) -> FleetReport:
    """Run the fleet: connect every device, offer ``rate`` records/s per device (after a
    ``backlog`` each) for ``seconds``, wait up to ``drain_s`` for the acks, disconnect. With
    ``stored_seqs`` the store is read at the end for ``stored``, ``lost`` and
    ``duplicates_stored``."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    report = FleetReport(options.devices)
    devices: list[VirtualDevice] = []
    for n in range(options.devices):
        name = f"{options.prefix}-{n:05d}"
        topics = DeviceTopics(options.site, name)
        dev = VirtualDevice(name, topics, options, random.Random(options.seed * 100_003 + n),
                            report, timer=AckTimeout(options.ack_timeout_s,
                                                     options.ack_timeout_max_s))
        will = Will(topics.status, encode_status(state="offline", device=name,
                                                 site=options.site, wall_time=time.time()))
        dev.link = MqttLink(broker, LinkOptions(client_id=f"lepton-sim-{options.site}-{name}",
                                                clean_start=True, session_expiry_s=0,
                                                will=will, reconnect_initial_s=0.2,
                                                reconnect_max_s=5.0), dev, loop)
        devices.append(dev)
    wall = time.time()
    for dev in devices:
        for _ in range(options.backlog):
            dev.make_record(wall)
    for dev in devices:
        dev.link.start()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30 + options.devices * 0.05
    while not all(d.link.connected for d in devices):  # type: ignore[union-attr]
        if time.monotonic() > deadline or stop.is_set():
            break
        await asyncio.sleep(0.05)
    tick = 0.02
    started = time.monotonic()
    next_telemetry = started
    made = 0
    while not stop.is_set():
        now = time.monotonic()
        elapsed = now - started
        if elapsed >= options.seconds:
            break
        due = int(options.rate * elapsed) - made
        if due > 0:
            wall = time.time()
            for dev in devices:
                for _ in range(due):
                    dev.make_record(wall)
            made += due
        for dev in devices:
            dev.pump(now)
        if now >= next_telemetry:
            next_telemetry = now + options.telemetry_s
            for dev in devices:
                dev.telemetry()
        await asyncio.sleep(tick)
    # The last fraction of a record per device: offer exactly rate * seconds.
    rest = int(options.rate * options.seconds) - made
    for dev in devices:
        for _ in range(max(0, rest)):
            dev.make_record(time.time())
    offered_at = time.monotonic()
    report.offer_s = round(offered_at - started, 3)
    if on_offered is not None:
        on_offered(report)
    drain_end = offered_at + options.drain_s
    while not stop.is_set() and time.monotonic() < drain_end:
        now = time.monotonic()
        for dev in devices:
            dev.pump(now)
        if all(d.pending == 0 for d in devices):
            report.catch_up_s = round(now - offered_at, 3)
            break
        await asyncio.sleep(tick)
    for dev in devices:
        if dev.link is not None and dev.link.connected:
            dev.link.publish(dev.topics.status, encode_status(
                state="offline", device=dev.name, site=options.site, wall_time=time.time()),
                qos=1, retain=True)
    await asyncio.gather(*(d.link.stop(2.0) for d in devices if d.link is not None))
    report.pending = sum(d.pending for d in devices)
    report.connects = sum(d.link.connects for d in devices if d.link is not None)
    if stored_seqs is not None:
        stored = stored_seqs(options.site, [d.name for d in devices])
        report.stored = sum(len(s) for s in stored.values())
        offered = {d.name: set(range(1, d.next_seq)) for d in devices}
        # Lost: acknowledged (so the device dropped it) and not stored. What is still pending
        # is not lost: the device holds it and publishes it again.
        report.lost = sum(len(d.acked - stored.get(d.name, set())) for d in devices)
        # Rows beyond what was offered (a seq stored twice cannot be: the key forbids it).
        report.duplicates_stored = sum(len(stored.get(d, set()) - offered[d]) for d in offered)
    return report


def store_reader(db: str) -> StoredSeqs:
    """Reads the seqs of stream ``cam0`` stored per device from an ingest database
    (``sqlite:///PATH`` or ``postgresql://...?schema=NAME``), as an independent check."""
    from agent.backend.store import open_store

    def read(site: str, names: list[str]) -> dict[str, set[int]]:
        store = open_store(db)
        try:
            rows = store.stored_keys(site, STREAM)
        finally:
            store.close()
        wanted = set(names)
        out: dict[str, set[int]] = {}
        for device, seq in rows:
            if device in wanted:
                out.setdefault(device, set()).add(int(seq))
        return out

    return read
