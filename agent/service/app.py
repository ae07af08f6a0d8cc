"""The agent: capture -> inference -> durable outbox -> MQTT, with a graceful stop.

Threads: ``capture`` (read, pace, prepare) and ``inference`` (LiteRT, GIL released in
invoke). Everything else runs on the event loop, in named tasks: ``mqtt-link`` drives paho's
socket, ``outbox-writer`` commits results in batches, ``telemetry`` reports health,
``watchdog``, ``monitor``, ``outbox-housekeeping`` and ``supervisor`` keep it running.
docs/architecture.md follows one frame through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import cv2

from agent import __version__
from agent.config import AgentConfig, Secrets
from agent.core.backoff import Backoff
from agent.core.contract.result import (
    FrameResult,
    ModelRef,
    encode_result,
    iso_utc,
)
from agent.core.contract.status import encode_status
from agent.core.contract.telemetry import encode_telemetry
from agent.core.contract.topics import DeviceTopics
from agent.core.outbox import PublishWindow
from agent.core.thermal import ThermalGovernor
from agent.core.uri import parse_broker, parse_source
from agent.errors import AgentError, StorageError
from agent.inference.model import load_model
from agent.inference.runner import ModelRunner
from agent.inference.worker import InferenceWorker, SnapshotPolicy
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue, DropPolicy
from agent.service.health import PipelineHealth
from agent.service.notify import Notifier
from agent.service.snapshot import HealthSnapshot
from agent.service.status import serve as serve_status
from agent.service.status import socket_path
from agent.sources.capture import CaptureWorker, MotionGate
from agent.sources.readers import open_reader
from agent.sources.thermal import SysfsThermal
from agent.storage.blobs import BlobStore
from agent.storage.lock import StateDirLock
from agent.storage.outbox import Outbox, PendingRecord
from agent.sync.mqtt import LinkOptions, MqttLink, Will, tls_context
from agent.sync.uplink import Uplink

if TYPE_CHECKING:
    from agent.service.sensors import SensorHub

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup
else:  # pragma: no cover
    from taskgroup import TaskGroup

log = logging.getLogger("agent.app")
RESULT_SLOTS = 256
SENSOR_BACKLOG = 10_000  # sensor records held in memory while commits fail
# After SIGTERM/SIGINT the process ends within shutdown_grace_s plus this, whatever the
# storage or a stage is doing (systemd's TimeoutStopSec must allow for both).
STOP_BOUND_S = 10.0


@dataclass
class RunSummary:
    """What one run did; printed at exit and returned to callers."""

    frames_captured: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    frames_skipped_static: int = 0
    detections: int = 0
    results_committed: int = 0
    storage_errors: int = 0
    sensor_records_dropped: int = 0
    results_uncommitted: int = 0  # held in memory at stop because every commit failed
    results_published: int = 0
    results_ingested: int = 0
    backlog: int = 0
    elapsed_s: float = 0.0
    processing_fps: float = 0.0
    first_publish_s: float | None = None
    broker: str | None = None
    broker_connected: bool = False
    broker_error: str | None = None
    peak_rss_mb: float = 0.0
    error: str | None = None
    task: str = ""
    top_classes: list[dict[str, Any]] = field(default_factory=list)  # classification only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True once it is set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


def _result_encoder(result: FrameResult, *, device: str, site: str, model: ModelRef,
                    sensors: dict[str, Any] | None = None) -> Callable[[int], bytes]:
    def build(seq: int) -> bytes:
        return encode_result(result, seq=seq, device=device, site=site, model=model,
                             sensors=sensors)

    return build


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class AgentApp:
    """One agent run, from config to summary."""

    def __init__(self, config: AgentConfig, secrets: Secrets | None = None) -> None:
        self.config = config
        self.secrets = secrets or Secrets()
        self.topics = DeviceTopics(config.agent.site, config.agent.device_id)
        self.summary = RunSummary()
        self.health: PipelineHealth | None = None
        self.latest_snapshot: HealthSnapshot | None = None
        self._stop_deadline: threading.Timer | None = None
        self._held: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def _choose_flow(self, is_live: bool) -> tuple[bool, DropPolicy]:
        src = self.config.source
        realtime = src.pace == "realtime" or (src.pace == "auto" and is_live)
        if src.drop_policy != "auto":
            return realtime, src.drop_policy
        return realtime, "drop_oldest" if realtime else "block"

    async def run(self, stop: asyncio.Event | None = None) -> RunSummary:
        """Run until the source ends, ``max_frames``, or ``stop`` (SIGTERM/SIGINT) is set.

        The state directory is locked for the whole run: a second agent on it is refused."""
        lock = StateDirLock(self.config.agent.state_dir).acquire()
        try:
            return await self._run(stop)
        finally:
            if self._stop_deadline is not None:
                self._stop_deadline.cancel()
            lock.release()

    async def _run(self, stop: asyncio.Event | None) -> RunSummary:
        cfg = self.config
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        installed = self._install_signals(loop, stop)

        # Stages run in parallel threads; OpenCV's own worker threads would compete with the
        # interpreter's for the same cores (measured: bench pipeline, 2 cores).
        cv2.setNumThreads(1)
        source_uri = parse_source(cfg.source.uri)
        if cfg.mqtt.broker and parse_broker(cfg.mqtt.broker).tls:  # a missing key or CA, now
            tls_context(cfg.mqtt.tls_ca_file, cfg.mqtt.tls_cert_file, self.secrets.tls_key_file)
        if not source_uri.is_live:
            open_reader(source_uri).close()  # fail fast, with the reason, on a bad file
        model = load_model(cfg.model.path, num_threads=cfg.model.num_threads,
                           delegate=cfg.model.delegate, score_threshold=cfg.model.score_threshold,
                           labels=cfg.model.labels)
        runner = ModelRunner(model, preprocess=cfg.kernels.preprocess)
        model_ref = model.ref
        until_ingested = cfg.outbox.delivery == "ingested"
        outbox = Outbox(cfg.agent.state_dir / "outbox.db", until_ingested=until_ingested,
                        budget_bytes=int(cfg.outbox.budget_bytes),
                        priorities=cfg.outbox.priorities,
                        durability_interval_s=cfg.outbox.durability_interval_s)
        realtime, policy = self._choose_flow(source_uri.is_live)
        log.info("model %s (%s, %s, sha256 %s...) on %s; source %s (%s, %s)", model_ref.name,
                 model.manifest.task, model.runtime, model_ref.sha256[:12], cfg.model.delegate,
                 source_uri.raw, "realtime" if realtime else "as fast as possible", policy)

        frames: BoundedQueue[CapturedFrame] = BoundedQueue("frames", cfg.source.queue_size, policy)
        pending: list[FrameResult] = []
        slots = threading.Semaphore(RESULT_SLOTS)
        wake = asyncio.Event()
        inference_done = asyncio.Event()

        def on_result(result: FrameResult) -> None:
            pending.append(result)
            wake.set()

        def deliver(result: FrameResult) -> None:
            slots.acquire()
            loop.call_soon_threadsafe(on_result, result)

        device, site = cfg.agent.device_id, cfg.agent.site
        results_topic = self.topics.results(cfg.source.stream)
        status_extra: dict[str, Any] = {"version": __version__, "model": model_ref.name,
                        "model_sha256": model_ref.sha256, "source": source_uri.raw,
                        "stream": cfg.source.stream, "board": cfg.agent.board,
                        "host": socket.gethostname(), "pid": os.getpid()}
        if outbox.quarantined:
            status_extra["cache"] = {"quarantined": str(outbox.quarantined)}
        birth = (self.topics.status, encode_status(state="online", device=device, site=site,
                                                   wall_time=time.time(), extra=status_extra))
        window = PublishWindow(cfg.mqtt.publish_window)
        sh = cfg.shards
        blobs = BlobStore(outbox, chunk_size=int(sh.chunk_size), expiry_s=sh.expiry_s)
        snapshots = (SnapshotPolicy(sh.snapshot_interval_s, sh.snapshot_min_detections,
                                    sh.snapshot_quality) if sh.snapshot_interval_s > 0 else None)
        uplink = Uplink(outbox, window, birth,
                        ack_topic=self.topics.ack if until_ingested else None, blobs=blobs,
                        shard_topic=self.topics.shards, shard_window=sh.in_flight)
        link = self._make_link(loop, uplink)
        if link:
            uplink.attach(link)
            link.start()

        t = cfg.thermal
        governor = ThermalGovernor(t.max_temp_c, t.hysteresis_c, t.max_level, t.step_c)
        thermal_sensor = SysfsThermal(t.sysfs)
        m = cfg.motion
        gate = MotionGate(m.min_score, m.every_n, m.grid_width, m.pixel_threshold,
                          m.learning_rate) if m.enabled else None
        capture = CaptureWorker(
            source_uri, frames, runner.prepare, realtime=realtime, loop_file=cfg.source.loop,
            max_frames=cfg.source.max_frames,
            backoff=Backoff(cfg.source.reconnect_initial_s, cfg.source.reconnect_max_s), motion=gate,
            governor=governor, keep_image=snapshots is not None)
        def inference_finished() -> None:
            loop.call_soon_threadsafe(inference_done.set)

        inference = InferenceWorker(frames, runner, cfg.source.stream, deliver, inference_finished,
                                    snapshots=snapshots)
        finished = asyncio.Event()

        sensor_pending: list[PendingRecord] = []

        def on_sensor_records(records: list[PendingRecord]) -> None:
            if len(sensor_pending) > SENSOR_BACKLOG:  # the disk is failing: keep the newest
                del sensor_pending[:len(records)]
                self.summary.sensor_records_dropped += len(records)
            sensor_pending.extend(records)
            wake.set()

        hub: SensorHub | None = None
        if cfg.sensors:  # imported only when used: pyserial and the sensor code cost RSS
            from agent.service.sensors import SensorHub

            hub = SensorHub(cfg.sensors, self.topics, emit=on_sensor_records, loop=loop,
                            delegate=cfg.model.delegate)
        attach = cfg.source.attach_sensors

        commit_retry = Backoff(0.5, 10.0)
        commit_blocked_until = 0.0

        def commit_pending() -> None:
            nonlocal commit_blocked_until
            if not (pending or sensor_pending) or time.monotonic() < commit_blocked_until:
                return
            batch = pending[:]
            sensor_batch = sensor_pending[:]
            try:
                for r in batch:
                    if r.snapshot is not None:
                        blobs.put(r.snapshot, kind="snapshot", content_type="image/jpeg", meta={
                            "stream": r.stream, "frame_index": r.frame_index,
                            "ts": iso_utc(r.capture_wall), "detections": len(r.detections),
                            "labels": sorted({d.label for d in r.detections})})
                stored = outbox.append([PendingRecord(
                    cfg.source.stream, results_topic, _result_encoder(
                        r, device=device, site=site, model=model_ref,
                        sensors=hub.attach(attach, r.capture_wall, cfg.source.attach_window_s)
                        if hub and attach else None)) for r in batch] + sensor_batch)
            except StorageError as exc:
                # Keep the results in memory (bounded by the result slots, which holds back
                # inference and so capture) and try again; the agent keeps running.
                delay = commit_retry.next_delay()
                commit_blocked_until = time.monotonic() + delay
                self.summary.storage_errors += 1
                health.storage_failed(str(exc))
                log.error("%s; %d result(s) held in memory, retrying in %.1fs", exc, len(batch),
                          delay)
                return
            commit_retry.reset()
            health.storage_error = None
            del pending[:len(batch)]
            del sensor_pending[:len(sensor_batch)]
            for _ in batch:
                slots.release()
            self.summary.results_committed += len(batch)
            uplink.committed(stored)
            uplink.blobs_added()

        self._held = lambda: (len(pending), len(sensor_pending))

        async def outbox_writer() -> None:
            nonlocal commit_blocked_until
            interval = cfg.outbox.commit_interval_ms / 1000
            # Ends when everything is committed, or once the stop's grace is over (finished)
            # while commits still fail: a stop is never held up by the storage.
            while not ((inference_done.is_set() and not pending and not sensor_pending)
                       or finished.is_set()):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=0.5)
                wake.clear()
                commit_pending()
                # Its own heartbeat: while the storage fails, inference waits for result slots
                # and the watchdog stays fed only as long as this loop keeps retrying.
                health.writer_went_round(commit_blocked_until)
                if interval:
                    await asyncio.sleep(interval)
            health.writer_stopped()
            commit_blocked_until = 0.0  # one last try, whatever the retry delay
            commit_pending()

        health = PipelineHealth(
            device=device, site=site, source=source_uri.raw, model=model_ref.name, capture=capture,
            inference=inference, frames=frames, outbox=outbox, uplink=uplink, link=link, gate=gate,
            governor=governor, started=started, broker=cfg.mqtt.broker,
            results_held=lambda: len(pending), result_slots=RESULT_SLOTS)
        self.health = health
        self.latest_snapshot = health.snapshot()

        async def telemetry() -> None:
            """Periodic health on ``telemetry``; the retained ``status`` is re-published when
            the cache's evictions, quarantine or storage error change."""
            reported: dict[str, Any] = {}
            while not await _wait(finished, cfg.mqtt.telemetry_interval_s):
                report = health.telemetry()
                cache = {k: v for k, v in report["cache"].items() if k != "used_bytes"}
                if cache != reported and (cache["evictions"] or cache["quarantined"]
                                          or cache["storage_error"] or reported):
                    uplink.birth = (self.topics.status, encode_status(
                        state="online", device=device, site=site, wall_time=time.time(),
                        extra={**status_extra, "cache": report["cache"]}))
                    if link and link.connected:
                        link.publish(*uplink.birth, qos=1, retain=True)
                        reported = cache
                if link and link.connected:
                    link.publish(self.topics.telemetry, encode_telemetry(
                        device=device, site=site, wall_time=time.time(), health=report), qos=0)

        async def monitor() -> None:
            """Refresh the cached snapshot (metrics read it from their own thread) and poll the
            thermal sensors, stepping the inference rate down or up."""
            next_thermal = 0.0
            while not finished.is_set():
                now = time.monotonic()
                if t.enabled and now >= next_thermal:
                    next_thermal = now + t.poll_s
                    health.thermal = reading = thermal_sensor.read()
                    before = governor.level
                    if governor.update(reading) != before:
                        log.warning("thermal: %s°C%s -> inference level %d of %d (%s)",
                                    reading.temp_c, " throttled" if reading.throttled else "",
                                    governor.level, governor.max_level,
                                    "recovering" if governor.level < before else "slowing down")
                with contextlib.suppress(sqlite3.Error):  # a failing disk is reported elsewhere
                    self.latest_snapshot = health.snapshot()
                await _wait(finished, 1.0)

        async def housekeeping() -> None:
            """Re-publish what ingest never acknowledged; prune delivered records."""
            timeout = cfg.outbox.ack_timeout_s
            period = min(max(timeout / 2, 0.1), 10.0)
            while not await _wait(finished, period):
                try:
                    housekeep(timeout)
                except (sqlite3.Error, StorageError) as exc:  # the disk: retried next period
                    health.storage_error = str(exc)
                    log.error("outbox housekeeping failed: %s", exc)

        def housekeep(timeout: float) -> None:
            if until_ingested and link and link.connected:
                uplink.flush_sent()
                n = outbox.requeue_unacked(time.time_ns() - int(timeout * 1e9))
                if n:
                    log.warning("%d record(s) published but not acknowledged by ingest within "
                                "%.0fs; publishing them again", n, timeout)
                    uplink.requeued()
                parts = blobs.requeue_unacked(time.time_ns() - int(timeout * 1e9))
                if parts:
                    log.warning("%d blob part(s) not acknowledged by ingest within %.0fs; "
                                "sending them again", parts, timeout)
                    uplink.blobs_added()
            outbox.prune_sent(cfg.outbox.keep_delivered)

        def delivered() -> bool:
            return uplink.idle and (not until_ingested or (outbox.backlog()[0] == 0
                                                           and blobs.backlog()[0] == 0))

        notifier = Notifier()
        stall_s = health.stall_s = max(10.0, (notifier.watchdog_s or 30.0) / 2)

        async def watchdog() -> None:
            """Feed systemd's watchdog from the event loop while no stage is stuck. A failing
            storage is not a hang: a restart would lose the results held in memory."""
            if notifier.watchdog_s is None:
                return
            period = notifier.watchdog_s / 3
            while not finished.is_set():
                problems = health.problems(stall_s)
                if not problems:
                    notifier.watchdog()
                else:
                    log.error("pipeline stuck for over %.0fs (%s): not feeding the watchdog",
                              stall_s, "; ".join(problems))
                await _wait(finished, period)

        async def supervisor() -> None:
            stop_wait = asyncio.create_task(stop.wait(), name="stop-wait")
            done_wait = asyncio.create_task(inference_done.wait(), name="inference-wait")
            await asyncio.wait({stop_wait, done_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            done_wait.cancel()
            notifier.stopping()
            health.state = "stopping"
            if stop.is_set():
                log.info("stopping: finishing queued frames, then publishing for up to %.1fs",
                         cfg.agent.shutdown_grace_s)
            capture.stop()
            grace_end = time.monotonic() + cfg.agent.shutdown_grace_s
            try:
                await asyncio.wait_for(inference_done.wait(), max(0.1, cfg.agent.shutdown_grace_s))
            except asyncio.TimeoutError:
                log.warning("inference did not finish within the grace period")
                frames.close()
                frames.clear()
                inference_done.set()
            while not (inference_done.is_set() and not pending) and time.monotonic() < grace_end:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0)
            while link and link.connected and not delivered() and time.monotonic() < grace_end:
                await asyncio.sleep(0.02)
            finished.set()

        status_server = await serve_status(
            socket_path(cfg.agent.state_dir, cfg.agent.status_socket),
            lambda: health.snapshot().to_json())
        metrics_server = None
        if cfg.metrics.prometheus_port:
            from agent.service.metrics import (
                MetricsUnavailable,
                exposure_warning,
                start_metrics_server,
            )

            try:
                metrics_server = start_metrics_server(cfg.metrics.prometheus_host,
                                                      cfg.metrics.prometheus_port,
                                                      lambda: self.latest_snapshot)
            except MetricsUnavailable as exc:
                log.warning("%s; the agent runs on without metrics", exc)
            else:
                log.info("Prometheus metrics on http://%s:%d/metrics",
                         cfg.metrics.prometheus_host, cfg.metrics.prometheus_port)
                if warning := exposure_warning(cfg.metrics.prometheus_host,
                                               cfg.metrics.prometheus_port):
                    log.warning("%s", warning)
        inference.start()
        capture.start()
        if hub:
            hub.start()
            health.sensors = hub
        notifier.ready(f"running {model_ref.name} on {source_uri.raw}")
        try:
            async with TaskGroup() as tasks:
                tasks.create_task(watchdog(), name="watchdog")
                tasks.create_task(outbox_writer(), name="outbox-writer")
                tasks.create_task(telemetry(), name="telemetry")
                tasks.create_task(monitor(), name="monitor")
                tasks.create_task(housekeeping(), name="outbox-housekeeping")
                tasks.create_task(supervisor(), name="supervisor")
        finally:
            health.state = "stopped"
            status_server.close()
            socket_path(cfg.agent.state_dir, cfg.agent.status_socket).unlink(missing_ok=True)
            if metrics_server is not None:
                metrics_server.shutdown()
            capture.stop()
            frames.close()
            capture.join(2.0)
            inference.join(2.0)
            if hub:
                hub.stop()
                await asyncio.sleep(0)  # bytes the readers handed over are parsed
                commit_blocked_until = 0.0
                commit_pending()
            if link:
                if link.connected:
                    link.publish(self.topics.status, encode_status(
                        state="offline", device=device, site=site, wall_time=time.time(),
                        extra={"reason": "stopped"}), qos=1, retain=True)
                await link.stop(2.0)
            backlog = self._close_storage(uplink, outbox)
            if pending or sensor_pending:
                self.summary.results_uncommitted = len(pending)
                self.summary.sensor_records_dropped += len(sensor_pending)
                log.error("stopping with %d result(s) and %d sensor record(s) not committed "
                          "(%s); they are lost. Records committed before are kept.",
                          len(pending), len(sensor_pending),
                          health.storage_error or "the storage did not take them in time")
            for sig in installed:
                loop.remove_signal_handler(sig)
            notifier.close()

        s = self.summary
        s.frames_captured = capture.stats.frames
        s.frames_processed = inference.stats.frames
        s.frames_dropped = frames.stats.dropped
        s.frames_skipped_static = gate.skipped if gate else 0
        s.detections = inference.stats.detections
        s.task = model.manifest.task
        s.top_classes = inference.stats.top_classes()
        s.results_published = uplink.acked
        s.results_ingested = uplink.ingested
        s.backlog = backlog
        s.elapsed_s = round(time.monotonic() - started, 3)
        st = inference.stats
        if st.first_result_at is not None and st.last_result_at is not None and st.frames > 1:
            s.processing_fps = round((st.frames - 1) / max(st.last_result_at - st.first_result_at,
                                                           1e-9), 2)
        if uplink.first_ack_at is not None:
            s.first_publish_s = round(uplink.first_ack_at - started, 3)
        s.broker = cfg.mqtt.broker
        s.peak_rss_mb = peak_rss_mb()
        s.broker_connected = bool(link and link.connects)
        s.broker_error = link.last_error if link else None
        fatal: AgentError | None = capture.stats.fatal or inference.stats.fatal
        if fatal:
            s.error = str(fatal)
            raise fatal
        return s

    @staticmethod
    def _close_storage(uplink: Uplink, outbox: Outbox) -> int:
        """Mark what the broker took, close the outbox; the backlog left (-1 if unreadable).
        A failing disk is logged, never raised: committed records are safe in the file."""
        backlog = -1
        try:
            uplink.flush_sent()  # lost on failure: those records are only published again
            backlog, _ = outbox.backlog()
        except (sqlite3.Error, StorageError) as exc:
            log.error("outbox at stop: %s", exc)
        with contextlib.suppress(sqlite3.Error):
            outbox.close()
        return backlog

    def _on_signal(self, stop: asyncio.Event) -> None:
        """SIGTERM/SIGINT: stop gracefully, and make sure the process ends in bounded time."""
        stop.set()
        if self._stop_deadline is None:
            limit = self.config.agent.shutdown_grace_s + STOP_BOUND_S
            self._stop_deadline = threading.Timer(limit, self._stop_overdue, (limit,))
            self._stop_deadline.daemon = True
            self._stop_deadline.start()

    def _stop_overdue(self, limit: float) -> None:
        """The graceful stop did not finish in time (a stage or the disk hangs): exit now.
        Records already committed are safe in the outbox (SQLite's WAL survives this)."""
        results, sensors = self._held()
        log.critical("did not stop within %.0fs of the signal; exiting now with %d result(s) "
                     "and %d sensor record(s) not committed, which are lost", limit, results,
                     sensors)
        logging.shutdown()
        os._exit(1)

    def _install_signals(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, stop)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        return installed

    def _make_link(self, loop: asyncio.AbstractEventLoop, uplink: Uplink) -> MqttLink | None:
        m = self.config.mqtt
        if not m.broker:
            log.warning("no broker configured: results stay in the outbox until one is")
            return None
        broker = parse_broker(m.broker)
        will = Will(self.topics.status, encode_status(
            state="offline", device=self.config.agent.device_id, site=self.config.agent.site,
            wall_time=time.time(), extra={"reason": "connection lost"}))
        options = LinkOptions(
            client_id=m.client_id or f"lepton-{self.config.agent.site}-{self.config.agent.device_id}",
            session_expiry_s=m.session_expiry_s, keepalive_s=m.keepalive_s, username=m.username,
            password=self.secrets.mqtt_password, tls_ca_file=m.tls_ca_file,
            tls_cert_file=m.tls_cert_file, tls_key_file=self.secrets.tls_key_file,
            will=will, reconnect_initial_s=m.reconnect_initial_s,
            reconnect_max_s=m.reconnect_max_s)
        return MqttLink(broker, options, uplink, loop)
