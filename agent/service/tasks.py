"""The agent's long-running event-loop tasks, one small class each, started by name in the
runtime's TaskGroup: ``outbox-writer`` commits what pipelines and sensors hand over;
``telemetry`` publishes health; ``monitor`` refreshes the snapshot and steps the thermal
governor; ``outbox-housekeeping`` re-publishes what ingest never acknowledged and prunes;
``watchdog`` feeds systemd while nothing is stuck.

The periodic tasks run until they are cancelled (the runtime cancels them, then awaits them,
once the stop's delivery is over); the outbox writer ends by itself once it was told to close
and everything handed to it is committed, or when the stop's grace is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from agent.config.schema import ThermalSection
from agent.core.backoff import Backoff
from agent.core.contract.count import CountRecord, count_record, count_stream, encode_count
from agent.core.contract.event import SnapshotRef, encode_event, event_stream, track_event_body
from agent.core.contract.result import FrameResult, encode_result, iso_utc
from agent.core.contract.status import encode_status
from agent.core.contract.telemetry import encode_telemetry
from agent.core.contract.topics import DeviceTopics
from agent.core.thermal import ThermalGovernor
from agent.errors import BlobTooLarge, StorageError
from agent.service.analytics import FrameAnalysis
from agent.service.health import RuntimeHealth, StorageState
from agent.service.notify import Notifier
from agent.service.pipelines import ResultContext, analytics_key, position_key
from agent.service.snapshot import HealthSnapshot
from agent.sources.thermal import SysfsThermal
from agent.storage.blobs import BlobStore
from agent.storage.outbox import Outbox, PendingRecord
from agent.sync.mqtt import MqttLink
from agent.sync.uplink import AckTimeout, Uplink

if TYPE_CHECKING:
    from agent.service.sensors import SensorHub

log = logging.getLogger("agent.app")
RESULT_SLOTS = 256  # results handed over and not yet committed, over all pipelines
SENSOR_BACKLOG = 10_000  # sensor records held in memory while commits fail


@dataclass(frozen=True)
class HeldResult:
    """A result handed over by an inference thread (holding one of the result slots), or a
    pipeline's last analytics at its end (``slotted`` False), waiting for its commit."""

    result: FrameResult
    context: ResultContext
    slotted: bool = True


@dataclass(frozen=True)
class EventEncoder:
    """Builds a track event's payload once the outbox has given it its seq."""

    body: dict[str, Any]

    def __call__(self, seq: int) -> bytes:
        return encode_event(self.body, seq=seq)


@dataclass(frozen=True)
class CountEncoder:
    """Builds a count record's payload once the outbox has given it its seq."""

    record: CountRecord

    def __call__(self, seq: int) -> bytes:
        return encode_count(self.record, seq=seq)


@dataclass(frozen=True)
class ResultEncoder:
    """Builds a result's payload once the outbox has given it its seq."""

    held: HeldResult
    device: str
    site: str
    sensors: dict[str, Any] | None

    def __call__(self, seq: int) -> bytes:
        ctx = self.held.context
        return encode_result(self.held.result, seq=seq, device=self.device, site=self.site,
                             model=ctx.model, sensors=self.sensors)


class OutboxWriter:
    """Commits results and sensor records to the outbox in batches, then tells the uplink.

    Inference threads call :meth:`deliver`, which blocks while ``RESULT_SLOTS`` results wait
    (the back-pressure lands on each pipeline's frame queue). While commits fail, results stay
    in memory and the writer retries with a backoff; the agent keeps running.

    Commits are at most every ``interval_s`` (``[outbox] commit_interval_ms``): each commit
    writes a few pages whatever it holds, so a live camera's results are batched (docs/
    durability.md). What should not wait is committed at once: a frame's track events or
    closed counts, a pipeline waiting for its results at its stop, and the writer's close."""

    def __init__(self, *, outbox: Outbox, blobs: BlobStore, uplink: Uplink, device: str,
                 site: str, interval_s: float, loop: asyncio.AbstractEventLoop) -> None:
        self.outbox = outbox
        self.blobs = blobs
        self.uplink = uplink
        self.storage = StorageState()
        self.device = device
        self.site = site
        self.interval_s = interval_s
        self.loop = loop
        self.hub: SensorHub | None = None
        self.pending: list[HeldResult] = []
        self.sensor_pending: list[PendingRecord] = []
        self.slots = threading.Semaphore(RESULT_SLOTS)
        self.wake = asyncio.Event()
        self.drained = asyncio.Event()  # closing, and nothing left to commit
        self.progress = asyncio.Event()  # set after each commit that took something
        self.urgent = asyncio.Event()  # ends the wait between two commits
        self.retry = Backoff(0.5, 10.0)
        self.blocked_until = 0.0
        self.closing = False
        self.committed = 0
        self.sensor_records_dropped = 0

    def deliver(self, result: FrameResult, context: ResultContext) -> None:
        """From an inference thread: hand a result over (blocks while every slot is held)."""
        self.slots.acquire()
        self.loop.call_soon_threadsafe(self._take, HeldResult(result, context))

    def _take(self, held: HeldResult) -> None:
        self.pending.append(held)
        self.wake.set()
        analysis = held.result.analytics
        if analysis is not None and (analysis.events or analysis.closed):
            self.urgent.set()
        elif len(self.pending) >= RESULT_SLOTS // 2:
            # A fast source fills the slots well within a commit interval: committing at half
            # keeps inference from waiting on the interval (with 1 s commits it was held to
            # RESULT_SLOTS results a second).
            self.urgent.set()

    def add_analysis(self, analysis: FrameAnalysis, context: ResultContext) -> None:
        """On the event loop: a pipeline's last analytics (its open bucket, closed partial)."""
        self._take(HeldResult(FrameResult(
            stream=context.stream, frame_index=-1, capture_wall=time.time(), capture_mono_ns=0,
            width=0, height=0, task="", detected=False, analytics=analysis), context,
            slotted=False))

    def add_sensor_records(self, records: list[PendingRecord]) -> None:
        """From the sensor hub (event loop): keep the newest while the disk is failing."""
        if len(self.sensor_pending) > SENSOR_BACKLOG:
            del self.sensor_pending[:len(records)]
            self.sensor_records_dropped += len(records)
        self.sensor_pending.extend(records)
        self.wake.set()

    @property
    def held(self) -> tuple[int, int]:
        """Results and sensor records handed over and not committed."""
        return len(self.pending), len(self.sensor_pending)

    def close(self) -> None:
        """No more results will come: end once everything held is committed."""
        self.closing = True
        self.wake.set()
        self.urgent.set()

    def _records(self, batch: list[HeldResult]) -> tuple[list[PendingRecord], dict[str, str]]:
        """The batch's records (results, then each frame's track events and closed counts) and
        the pipeline state to commit with them."""
        hub = self.hub
        records = []
        state: dict[str, str] = {}
        for held in batch:
            r, ctx = held.result, held.context
            if r.detected:
                sensors = (hub.attach(list(ctx.attach_sensors), r.capture_wall,
                                      ctx.attach_window_s)
                           if hub and ctx.attach_sensors else None)
                records.append(PendingRecord(ctx.stream, ctx.topic,
                                             ResultEncoder(held, self.device, self.site,
                                                           sensors)))
            analysis: FrameAnalysis | None = r.analytics
            if analysis is not None:
                records += self._analytics_records(analysis, ctx)
                state[analytics_key(ctx.stream)] = analysis.state
                if analysis.frame_index >= 0:
                    state[position_key(ctx.stream)] = str(analysis.frame_index)
        return records, state

    def _analytics_records(self, analysis: FrameAnalysis,
                           ctx: ResultContext) -> list[PendingRecord]:
        records = []
        model = {"name": ctx.model.name, "version": ctx.model.version,
                 "sha256": ctx.model.sha256}
        for out in analysis.events:
            event = out.event
            if out.snapshot is not None:
                blob = self._store_blob(out.snapshot, kind="snapshot", content_type="image/jpeg",
                                        meta={"stream": ctx.stream, "track_id": event.track_id,
                                              "rule": event.rule, "event": event.type,
                                              "ts": iso_utc(out.wall), "labels": [event.label]})
                if blob is not None:
                    event = replace(event, snapshot=SnapshotRef(blob))
            body = track_event_body(device=self.device, site=self.site, source=ctx.stream,
                                    ts=out.wall, event=event, model=model)
            records.append(PendingRecord(event_stream(ctx.stream), ctx.events_topic,
                                         EventEncoder(body), kind="event"))
        for bucket in analysis.closed:
            record = count_record(
                device=self.device, site=self.site, source=ctx.stream, start=bucket.start,
                seconds=bucket.seconds, partial=bucket.partial,
                counts=[(row.key.rule, row.key.kind, row.key.label, row.key.direction,
                         row.count) for row in bucket.counts])
            records.append(PendingRecord(count_stream(ctx.stream), ctx.counts_topic,
                                         CountEncoder(record), kind="count"))
        return records

    def _store_blob(self, data: bytes, **kwargs: Any) -> str | None:
        """Store a blob; None when it is larger than the outbox's budget could ever hold (then
        the record goes without it: holding it back for a retry would stop the pipeline)."""
        try:
            return self.blobs.put(data, **kwargs)
        except BlobTooLarge as exc:
            self.storage.dropped_blob(str(exc))
            log.error("%s; dropped it, the record goes without it", exc)
            return None

    def commit(self, force: bool = False) -> None:
        """Commit what is held, unless a failed commit's retry is not due (``force``: now)."""
        if not (self.pending or self.sensor_pending):
            return
        if not force and time.monotonic() < self.blocked_until:
            return
        batch = self.pending[:]
        sensor_batch = self.sensor_pending[:]
        try:
            for held in batch:
                r = held.result
                if r.mask_png is not None and self._store_blob(
                        r.mask_png, kind="mask", content_type="image/png", meta={
                            "stream": r.stream, "frame_index": r.frame_index,
                            "ts": iso_utc(r.capture_wall),
                            "labels": sorted({seg.label for seg in r.segments})}) is None:
                    r.mask_png = None  # the record names no blob that will never come
                if r.snapshot is not None and self._store_blob(
                        r.snapshot, kind="snapshot", content_type="image/jpeg", meta={
                            "stream": r.stream, "frame_index": r.frame_index,
                            "ts": iso_utc(r.capture_wall), "detections": len(r.detections),
                            "labels": sorted({d.label for d in r.detections})}) is None:
                    r.snapshot = None
            records, state = self._records(batch)
            stored = self.outbox.append(records + sensor_batch, state=state)
        except StorageError as exc:
            # Keep the results in memory (bounded by the result slots, which holds back
            # inference and so capture) and try again; the agent keeps running.
            delay = self.retry.next_delay()
            self.blocked_until = time.monotonic() + delay
            self.storage.failed(str(exc))
            log.error("%s; %d result(s) held in memory, retrying in %.1fs", exc, len(batch),
                      delay)
            return
        self.retry.reset()
        self.blocked_until = 0.0
        self.storage.error = None
        del self.pending[:len(batch)]
        del self.sensor_pending[:len(sensor_batch)]
        for held in batch:
            if held.slotted:
                self.slots.release()
        self.committed += sum(1 for held in batch if held.result.detected)
        self.uplink.committed(stored)
        self.uplink.blobs_added()
        self.progress.set()

    async def settled(self, stream: str, timeout_s: float) -> bool:
        """Wait until nothing of ``stream`` waits for its commit (False after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while any(held.context.stream == stream for held in self.pending):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.progress.clear()
            self.wake.set()
            self.urgent.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)
        return True

    async def run(self) -> None:
        """Until closed and drained. Its own heartbeat: while the storage fails, inference
        waits for result slots and the watchdog stays fed only as long as this keeps trying."""
        while not (self.closing and not self.pending and not self.sensor_pending):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=0.5)
            self.wake.clear()
            self.commit()
            self.storage.went_round(self.blocked_until)
            if self.interval_s and not self.closing:
                self.urgent.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.urgent.wait(), self.interval_s)
        self.storage.stopped()
        self.drained.set()


class Telemetry:
    """Periodic health on ``telemetry``; the retained ``status`` is re-published when the
    cache's evictions, quarantine or storage error change, or a pipeline's state does."""

    def __init__(self, *, topics: DeviceTopics, link: MqttLink | None, uplink: Uplink,
                 health: RuntimeHealth, birth: Callable[[HealthSnapshot], bytes],
                 interval_s: float) -> None:
        self.topics = topics
        self.link = link
        self.uplink = uplink
        self.health = health
        self.birth = birth
        self.interval_s = interval_s
        self._reported: dict[str, Any] = {}

    def refresh_birth(self, snapshot: HealthSnapshot) -> None:
        """Re-publish the retained status (the uplink sends it again on each connect)."""
        self.uplink.birth = (self.topics.status, self.birth(snapshot))
        if self.link and self.link.connected:
            self.link.publish(*self.uplink.birth, qos=1, retain=True)

    def tick(self) -> None:
        snapshot = self.health.snapshot()
        cache = {k: v for k, v in snapshot.cache().items() if k != "used_bytes"}
        if cache != self._reported and (cache["evictions"] or cache["quarantined"]
                                        or cache["storage_error"] or self._reported):
            self.refresh_birth(snapshot)
            self._reported = cache
        if self.link and self.link.connected:
            self.link.publish(self.topics.telemetry, encode_telemetry(
                device=self.health.device, site=self.health.site, wall_time=time.time(),
                health=snapshot.telemetry()), qos=0)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.tick()


class Monitor:
    """Refreshes the cached snapshot (metrics read it from their own thread) and polls the
    thermal sensors, stepping the inference rate down or up."""

    def __init__(self, *, health: RuntimeHealth, governor: ThermalGovernor,
                 sensor: SysfsThermal, thermal: ThermalSection,
                 publish: Callable[[HealthSnapshot], None]) -> None:
        self.health = health
        self.governor = governor
        self.sensor = sensor
        self.thermal = thermal
        self.publish = publish
        self._next_thermal = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if self.thermal.enabled and now >= self._next_thermal:
            self._next_thermal = now + self.thermal.poll_s
            self.health.thermal = reading = self.sensor.read()
            governor = self.governor
            before = governor.level
            if governor.update(reading) != before:
                log.warning("thermal: %s°C%s -> inference level %d of %d (%s)",
                            reading.temp_c, " throttled" if reading.throttled else "",
                            governor.level, governor.max_level,
                            "recovering" if governor.level < before else "slowing down")
        with contextlib.suppress(sqlite3.Error):  # a failing disk is reported elsewhere
            self.publish(self.health.snapshot())

    async def run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(1.0)


class Housekeeping:
    """Re-publishes what ingest never acknowledged; prunes delivered records."""

    def __init__(self, *, outbox: Outbox, blobs: BlobStore, uplink: Uplink,
                 link: MqttLink | None, health: RuntimeHealth, until_ingested: bool,
                 ack_timeout_s: float, keep_delivered: int) -> None:
        self.outbox = outbox
        self.blobs = blobs
        self.uplink = uplink
        self.link = link
        self.health = health
        self.until_ingested = until_ingested
        self.ack_timeout_s = ack_timeout_s
        self.keep_delivered = keep_delivered
        # [outbox] ack_timeout_s is the least wait; late acks stretch it up to 10x, so a
        # backend minutes behind is not sent the backlog again (agent.sync.uplink.AckTimeout).
        uplink.ack_timeout = AckTimeout(ack_timeout_s, 10 * ack_timeout_s)

    def tick(self) -> None:
        timeout = self.uplink.ack_timeout.timeout_s
        if self.until_ingested and self.link and self.link.connected:
            self.uplink.flush_sent()
            n = self.outbox.requeue_unacked(time.time_ns() - int(timeout * 1e9))
            if n:
                log.warning("%d record(s) published but not acknowledged by ingest within "
                            "%.0fs; publishing them again", n, timeout)
                self.uplink.ack_timeout.resending(time.monotonic())
                self.uplink.requeued()
            parts = self.blobs.requeue_unacked(time.time_ns() - int(timeout * 1e9))
            if parts:
                log.warning("%d blob part(s) not acknowledged by ingest within %.0fs; "
                            "sending them again", parts, timeout)
                self.uplink.blobs_added()
        self.outbox.prune_sent(self.keep_delivered)

    async def run(self) -> None:
        period = min(max(self.ack_timeout_s / 2, 0.1), 10.0)
        while True:
            await asyncio.sleep(period)
            try:
                self.tick()
            except (sqlite3.Error, StorageError) as exc:  # the disk: retried next period
                self.health.storage.error = str(exc)
                log.error("outbox housekeeping failed: %s", exc)


class Watchdog:
    """Feeds systemd's watchdog from the event loop while nothing is stuck. A failing storage
    is not a hang: a restart would lose the results held in memory."""

    def __init__(self, *, notifier: Notifier, health: RuntimeHealth, stall_s: float) -> None:
        self.notifier = notifier
        self.health = health
        self.stall_s = stall_s

    def tick(self) -> None:
        problems = self.health.problems(self.stall_s)
        if not problems:
            self.notifier.watchdog()
        else:
            log.error("pipeline stuck for over %.0fs (%s): not feeding the watchdog",
                      self.stall_s, "; ".join(problems))

    async def run(self) -> None:
        if self.notifier.watchdog_s is None:
            return
        while True:
            self.tick()
            await asyncio.sleep(self.notifier.watchdog_s / 3)


def status_payload(*, state: str, device: str, site: str, extra: dict[str, Any],
                   snapshot: HealthSnapshot | None) -> bytes:
    """The retained ``status`` record: who runs here, its pipelines and its cache."""
    fields = dict(extra)
    if snapshot is not None:
        fields["pipelines"] = [{"stream": p.stream, "state": p.state, "reason": p.reason,
                                "source": p.source, "model": p.model,
                                "model_sha256": p.model_sha256} for p in snapshot.pipelines]
        cache = snapshot.cache()
        if cache["evictions"] or cache["quarantined"] or cache["storage_error"]:
            fields["cache"] = cache
        if snapshot.ota.reported:  # a deployed model, a deployment, its outcome, clock skew
            fields["ota"] = snapshot.ota.to_json()
    return encode_status(state=state, device=device, site=site, wall_time=time.time(),
                         extra=fields)
