"""The agent's runtime: build the parts, start the pipelines and the tasks, stop gracefully.

One frame's way (docs/architecture.md): a pipeline's ``capture-{stream}`` thread reads and
prepares it, its ``inference-{stream}`` thread runs the model (agent.service.pipelines), the
``outbox-writer`` task commits the result to the outbox, the uplink publishes it on the
``mqtt-link`` and marks it delivered on PUBACK or on ingest's ack. The other named tasks
(agent.service.tasks) keep it running; the ``supervisor`` here decides when the run ends and
drives the graceful stop: stop the sources, finish the queued frames, commit, publish what
the grace allows, then cancel the periodic tasks and await them.
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
from pathlib import Path
from typing import Any

import cv2

from agent import __version__
from agent.config import AgentConfig, PipelineSpec, Secrets
from agent.core.contract.status import encode_status
from agent.core.uri import parse_broker
from agent.errors import AgentError, StorageError
from agent.service.commands import CommandService, load_applied
from agent.service.components import Components, build
from agent.service.homeassistant import start_homeassistant
from agent.service.ota import TRUST_DIR
from agent.service.pipelines import Pipeline, wait_event
from agent.service.snapshot import HealthSnapshot
from agent.service.status import serve as serve_status
from agent.service.status import socket_path
from agent.service.tasks import status_payload
from agent.storage.lock import StateDirLock
from agent.storage.outbox import Outbox
from agent.storage.report import read_all_state
from agent.storage.volatile import state_dir_unusable, volatile_budget, volatile_dir
from agent.sync.mqtt import tls_context
from agent.sync.uplink import Uplink

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup
else:  # pragma: no cover
    from taskgroup import TaskGroup

log = logging.getLogger("agent.app")
# After SIGTERM/SIGINT the process ends within shutdown_grace_s plus this, whatever the
# storage or a stage is doing (systemd's TimeoutStopSec must allow for both).
STOP_BOUND_S = 10.0


@dataclass
class StreamSummary:
    """What one pipeline did."""

    stream: str
    state: str
    reason: str | None
    frames_captured: int
    frames_processed: int
    frames_dropped: int
    detections: int
    processing_fps: float
    # Every how many frames the detector ran: the configured interval, or lower where the
    # source's fps and analytics.min_detector_hz asked for it.
    detector_interval: int = 1
    # What its lines and zones counted in the buckets this run emitted (restored counts of an
    # earlier run included): one entry per rule, kind, class and direction.
    counts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunSummary:
    """What one run did (all pipelines together, and each in ``streams``); printed at exit
    and returned to callers."""

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
    streams: list[StreamSummary] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _processing_fps(pipeline: Pipeline) -> float:
    inference = pipeline.inference
    if inference is None:
        return 0.0
    st = inference.stats
    if st.first_result_at is None or st.last_result_at is None or st.frames < 2:
        return 0.0
    return round((st.frames - 1) / max(st.last_result_at - st.first_result_at, 1e-9), 2)


class Supervisor:
    """The ``supervisor`` task: waits until a stop is asked for or every pipeline has ended
    by itself (end of file, ``max_frames``, failure), then runs the graceful stop and cancels
    the periodic tasks. Pipelines stopped through the API do not end the run."""

    def __init__(self, parts: Components, stop: asyncio.Event, changed: asyncio.Event,
                 grace_s: float, until_ingested: bool) -> None:
        self.parts = parts
        self.stop = stop
        self.changed = changed
        self.grace_s = grace_s
        self.until_ingested = until_ingested
        self.progress = asyncio.Event()
        parts.uplink.on_progress = self.progress.set
        self.background: list[asyncio.Task[None]] = []
        self.writer_task: asyncio.Task[None] | None = None

    def ended_by_themselves(self) -> bool:
        pipelines = list(self.parts.pipelines)
        return (bool(pipelines) and not self.parts.pipelines.changing
                and all(p.done.is_set() for p in pipelines)
                and any(not p.stop_requested for p in pipelines))

    def delivered(self) -> bool:
        p = self.parts
        return p.uplink.idle and (not self.until_ingested or (
            p.outbox.backlog()[0] == 0 and p.blobs.backlog()[0] == 0))

    async def run(self) -> None:
        while not (self.stop.is_set() or self.ended_by_themselves()):
            stop_wait = asyncio.create_task(self.stop.wait(), name="stop-wait")
            change_wait = asyncio.create_task(self.changed.wait(), name="pipelines-wait")
            await asyncio.wait({stop_wait, change_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            change_wait.cancel()
            self.changed.clear()
        await self.graceful_stop()

    async def graceful_stop(self) -> None:
        p = self.parts
        p.notifier.stopping()
        p.health.state = "stopping"
        if self.stop.is_set():
            log.info("stopping: finishing queued frames, then publishing for up to %.1fs",
                     self.grace_s)
        grace_end = time.monotonic() + self.grace_s
        p.pipelines.stop_all()
        running = [pl.done.wait() for pl in p.pipelines if not pl.done.is_set()]
        if running:
            _, late = await asyncio.wait([asyncio.ensure_future(w) for w in running],
                                         timeout=max(0.1, self.grace_s))
            if late:
                log.warning("inference did not finish within the grace period")
                p.pipelines.abort_all()
                for w in late:
                    w.cancel()
        p.writer.close()
        await wait_event(p.writer.drained, grace_end - time.monotonic())
        # A link still making its first connection (no error yet) is waited for: a finite run
        # can end before the broker has answered, and what it committed is then delivered.
        while p.link and (p.link.connected or p.link.last_error is None) and not self.delivered():
            left = grace_end - time.monotonic()
            if left <= 0:
                break
            self.progress.clear()
            await wait_event(self.progress, min(left, 1.0))
        for task in [*self.background, self.writer_task]:
            if task is not None:
                task.cancel()


class AgentApp:
    """One agent run, from config to summary."""

    def __init__(self, config: AgentConfig, secrets: Secrets | None = None) -> None:
        self.config = config
        self.secrets = secrets or Secrets()
        self.summary = RunSummary()
        self.parts: Components | None = None
        self.latest_snapshot: HealthSnapshot | None = None
        self._stop_deadline: threading.Timer | None = None
        self._held: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self._changed: asyncio.Event | None = None
        self.config_version = 0  # of the pipelines' config, changed by commands
        self.commands: CommandService | None = None
        self.web: Any = None  # the web console (agent.service.web.server.WebConsole) when on
        self.volatile: str | None = None  # why the outbox is volatile (see _go_volatile)
        self._adopt: dict[str, str] = {}  # the real outbox's committed state, when volatile

    async def run(self, stop: asyncio.Event | None = None) -> RunSummary:
        """Run until every pipeline has ended, or ``stop`` (SIGTERM/SIGINT) is set.

        The state directory is locked for the whole run: a second agent on it is refused.
        One that cannot be written (read-only, full) is swapped for a volatile one
        (:meth:`_go_volatile`), locked too, and the real one still holds off a second agent."""
        state_dir = self.config.agent.state_dir
        reason = state_dir_unusable(state_dir)
        if reason is None:
            locks = [StateDirLock(state_dir).acquire()]
        else:
            locks = [StateDirLock(state_dir, read_only=True).acquire()]
            try:
                locks.append(StateDirLock(self._go_volatile(reason)).acquire())
            except BaseException:
                locks[0].release()
                raise
        try:
            return await self._run(stop)
        finally:
            if self._stop_deadline is not None:
                self._stop_deadline.cancel()
            for lock in reversed(locks):
                lock.release()

    def _go_volatile(self, reason: str) -> Path:
        """Run on a volatile outbox: the config's state directory becomes the volatile one (with
        the configured one's applied config, and a budget that spares RAM); returns it."""
        real = self.config.agent.state_dir
        where = volatile_dir(real)
        try:
            where.mkdir(parents=True, exist_ok=True)
            budget = volatile_budget(int(self.config.outbox.budget_bytes), where)
        except OSError as exc:
            raise StorageError(f"state directory {real} is not writable ({reason}) and the "
                               f"volatile one cannot be made either: {exc.strerror or exc}",
                               path=str(where), fix=f"make {real} writable or free space on "
                               "it, then restart the agent") from exc
        # Fleet commands' config, applied last in the real directory, still runs, and what the
        # real outbox committed with its records (a file source's position, the open count
        # bucket, OTA state) carries on: a file restarted from frame 0 would give frames
        # already delivered new seqs, duplicates at ingest.
        config, self.config_version = load_applied(self.config)
        try:
            self._adopt = read_all_state(real)
        except StorageError as exc:
            log.warning("%s; file sources start from their beginning and counts from zero", exc)
        self.volatile = (f"state directory {real} is not writable ({reason}): running on a "
                         f"volatile outbox in {where}")
        log.error("%s; results are not kept through a reboot or a power cut, and the backlog in "
                  "%s waits for the next start (fix: make %s writable or free space on it, then "
                  "restart the agent)", self.volatile, real, real)
        update: dict[str, Any] = {
            "agent": config.agent.model_copy(update={"state_dir": where}),
            "outbox": config.outbox.model_copy(update={"budget_bytes": budget})}
        if not config.ota.trusted_keys and (real / TRUST_DIR).is_dir():  # the keys stay trusted
            update["ota"] = config.ota.model_copy(update={"trusted_keys": [real / TRUST_DIR]})
        self.config = config.model_copy(update=update)
        return where

    # The internal API fleet control drives (event-loop thread, while run() runs).
    async def start_pipeline(self, spec: PipelineSpec) -> Pipeline:
        """Start a pipeline while the agent runs; raises the AgentError when it fails."""
        if self.parts is None:
            raise AgentError("the agent is not running", fix="start it with lepton-agent run")
        return await self.parts.pipelines.start(spec)

    async def stop_pipeline(self, stream: str) -> Pipeline:
        """Stop one pipeline while the others run; its results are committed as usual."""
        if self.parts is None:
            raise AgentError("the agent is not running", fix="start it with lepton-agent run")
        return await self.parts.pipelines.stop(stream, self.config.agent.shutdown_grace_s)

    def _pipelines_changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
        parts = self.parts
        if parts is not None and parts.uplink.birth is not None:
            with contextlib.suppress(sqlite3.Error, StorageError):
                parts.telemetry.refresh_birth(parts.health.snapshot())

    def _birth(self, snapshot: HealthSnapshot | None) -> bytes:
        cfg = self.config
        first = snapshot.pipelines[0] if snapshot and snapshot.pipelines else None
        extra: dict[str, Any] = {
            "version": __version__, "model": first.model if first else None,
            "model_sha256": first.model_sha256 if first else None,
            "source": first.source if first else None, "stream": first.stream if first else None,
            "board": cfg.agent.board, "host": socket.gethostname(), "pid": os.getpid()}
        return status_payload(state="online", device=cfg.agent.device_id, site=cfg.agent.site,
                              extra=extra, snapshot=snapshot)

    def _publish_snapshot(self, snapshot: HealthSnapshot) -> None:
        self.latest_snapshot = snapshot

    async def _start_pipelines(self, parts: Components) -> None:
        """Start every configured pipeline; raise the first error only if none started."""
        errors: list[tuple[str, AgentError]] = []
        for spec in self.config.pipeline_specs():
            try:
                await parts.pipelines.start(spec)
            except AgentError as exc:
                errors.append((spec.stream, exc))
        if errors and len(errors) == len(parts.pipelines):
            raise errors[0][1]
        for stream, error in errors:
            log.error("pipeline %s did not start: %s; the other pipelines run on without it",
                      stream, error)

    async def _run(self, stop: asyncio.Event | None) -> RunSummary:
        # What set-config/assign/unassign applied last (state_dir/config.applied.toml) runs.
        self.config, version = load_applied(self.config)
        self.config_version = version or self.config_version
        cfg = self.config
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        self._changed = asyncio.Event()
        installed = self._install_signals(loop, stop)
        # Stages run in parallel threads; OpenCV's own worker threads would compete with the
        # interpreter's for the same cores (measured: bench pipeline, 2 cores).
        cv2.setNumThreads(1)
        if cfg.mqtt.broker and parse_broker(cfg.mqtt.broker).tls:  # a missing key or CA, now
            tls_context(cfg.mqtt.tls_ca_file, cfg.mqtt.tls_cert_file, self.secrets.tls_key_file)
        parts = build(cfg, self.secrets, loop, started=started, birth=self._birth,
                      publish_snapshot=self._publish_snapshot,
                      pipelines_changed=self._pipelines_changed, volatile=self.volatile)
        self.parts = parts
        self._held = lambda: parts.writer.held
        if self._adopt:
            with contextlib.suppress(sqlite3.Error, StorageError):  # a fresh start, at worst
                parts.outbox.adopt_state(self._adopt)
        try:
            await self._start_pipelines(parts)
        except BaseException:
            for sig in installed:
                loop.remove_signal_handler(sig)
            parts.pipelines.stop_all()
            for pipeline in parts.pipelines:
                pipeline.join(2.0)
            with contextlib.suppress(sqlite3.Error):
                parts.outbox.close()
            raise
        if not cfg.mqtt.broker:
            log.warning("no broker configured: results stay in the outbox until one is")
        health = parts.health
        snapshot = health.snapshot()
        self.latest_snapshot = snapshot
        parts.uplink.birth = (parts.topics.status, self._birth(snapshot))
        self.commands = CommandService(self, parts, started=started)
        self.commands.attach()
        homeassistant = start_homeassistant(self, cfg)  # [homeassistant]: off unless enabled
        if parts.link:
            parts.link.start()
        supervisor = Supervisor(parts, stop, self._changed, cfg.agent.shutdown_grace_s,
                                cfg.outbox.delivery == "ingested")
        status_server = await serve_status(
            socket_path(cfg.agent.state_dir, cfg.agent.status_socket),
            lambda: health.snapshot().to_json())
        metrics_server = self._start_metrics()
        if cfg.web.listen:  # imported only when on: aiohttp costs start-up time and RSS
            from agent.service.web.server import start_web

            self.web = await start_web(self, cfg, self.secrets)
        if parts.hub:
            parts.hub.start()
        first = snapshot.pipelines[0]
        parts.notifier.ready(f"running {first.model} on {first.source}"
                             + (f" and {len(snapshot.pipelines) - 1} more pipeline(s)"
                                if len(snapshot.pipelines) > 1 else ""))
        try:
            async with TaskGroup() as tasks:
                supervisor.background = [
                    tasks.create_task(parts.watchdog.run(), name="watchdog"),
                    tasks.create_task(parts.telemetry.run(), name="telemetry"),
                    tasks.create_task(parts.monitor.run(), name="monitor"),
                    tasks.create_task(parts.housekeeping.run(), name="outbox-housekeeping")]
                if homeassistant is not None:
                    supervisor.background.append(
                        tasks.create_task(homeassistant.run(), name="homeassistant"))
                supervisor.writer_task = tasks.create_task(parts.writer.run(),
                                                           name="outbox-writer")
                tasks.create_task(supervisor.run(), name="supervisor")
        finally:
            backlog = await self._shut_down(parts, status_server, metrics_server)
            for sig in installed:
                loop.remove_signal_handler(sig)
            parts.notifier.close()
        return self._summarize(parts, started, backlog)

    async def _shut_down(self, parts: Components, status_server: asyncio.AbstractServer,
                         metrics_server: Any) -> int:
        """After the tasks: close the servers, join the threads, commit what is left, say
        goodbye on the link, close the outbox. Returns the backlog left (-1 if unreadable)."""
        cfg = self.config
        parts.health.state = "stopped"
        status_server.close()
        if self.web is not None:
            await self.web.close()
        socket_path(cfg.agent.state_dir, cfg.agent.status_socket).unlink(missing_ok=True)
        if metrics_server is not None:
            metrics_server.shutdown()
        parts.pipelines.stop_all()
        for pipeline in parts.pipelines:
            pipeline.join(2.0)
        if parts.hub:
            parts.hub.stop()
            await asyncio.sleep(0)  # bytes the readers handed over are parsed
        parts.writer.commit(force=True)  # one last try, whatever the retry delay
        link = parts.link
        if link:
            if link.connected:
                link.publish(parts.topics.status, encode_status(
                    state="offline", device=cfg.agent.device_id, site=cfg.agent.site,
                    wall_time=time.time(), extra={"reason": "stopped"}), qos=1, retain=True)
            await link.stop(2.0)
        backlog = self._close_storage(parts.uplink, parts.outbox)
        if self.volatile and backlog > 0:
            log.warning("%d record(s) not delivered are left in the volatile outbox %s: a "
                        "reboot or a power cut loses them (systemd also removes its runtime "
                        "directory when the service stops)", backlog, cfg.agent.state_dir)
        held, sensors_held = parts.writer.held
        if held or sensors_held:
            self.summary.results_uncommitted = held
            self.summary.sensor_records_dropped += sensors_held
            log.error("stopping with %d result(s) and %d sensor record(s) not committed "
                      "(%s); they are lost. Records committed before are kept.",
                      held, sensors_held,
                      parts.writer.storage.error or "the storage did not take them in time")
        return backlog

    def _summarize(self, parts: Components, started: float, backlog: int) -> RunSummary:
        s = self.summary
        pipelines = list(parts.pipelines)
        for p in pipelines:
            status = p.status(time.monotonic())
            s.streams.append(StreamSummary(
                stream=p.stream, state=p.state, reason=p.reason,
                frames_captured=status.capture.frames, frames_processed=status.inference.frames,
                frames_dropped=status.frames.dropped, detections=status.inference.detections,
                processing_fps=_processing_fps(p),
                detector_interval=p.capture.interval if p.capture is not None else p.spec.interval,
                counts=[{"rule": r, "kind": k, "label": lb, "direction": d, "count": n}
                        for (r, k, lb, d), n in sorted(p.analytics.totals.items())]
                if p.analytics is not None else []))
        s.frames_captured = sum(x.frames_captured for x in s.streams)
        s.frames_processed = sum(x.frames_processed for x in s.streams)
        s.frames_dropped = sum(x.frames_dropped for x in s.streams)
        s.frames_skipped_static = sum(p.gate.skipped for p in pipelines if p.gate)
        s.detections = sum(x.detections for x in s.streams)
        s.processing_fps = round(sum(x.processing_fps for x in s.streams), 2)
        s.results_committed = parts.writer.committed
        s.storage_errors = parts.writer.storage.errors
        s.sensor_records_dropped += parts.writer.sensor_records_dropped
        first = pipelines[0] if pipelines else None
        if first is not None and first.model is not None:
            s.task = first.model.manifest.task
        if first is not None and first.inference is not None:
            s.top_classes = first.inference.stats.top_classes()
        s.results_published = parts.uplink.acked
        s.results_ingested = parts.uplink.ingested
        s.backlog = backlog
        s.elapsed_s = round(time.monotonic() - started, 3)
        if parts.uplink.first_ack_at is not None:
            s.first_publish_s = round(parts.uplink.first_ack_at - started, 3)
        s.broker = self.config.mqtt.broker
        s.peak_rss_mb = peak_rss_mb()
        link = parts.link
        s.broker_connected = bool(link and link.connects)
        s.broker_error = link.last_error if link else None
        failed = [p for p in pipelines if p.fatal is not None]
        if failed:
            s.error = "; ".join(f"{p.stream}: {p.fatal}" for p in failed)
            if len(failed) == len(pipelines):  # nothing ran to its end: the run failed
                fatal = failed[0].fatal
                assert fatal is not None
                raise fatal
        return s

    def _start_metrics(self) -> Any:
        cfg = self.config
        if not cfg.metrics.prometheus_port:
            return None
        from agent.service.metrics import (
            MetricsUnavailable,
            exposure_warning,
            start_metrics_server,
        )

        try:
            server = start_metrics_server(cfg.metrics.prometheus_host,
                                          cfg.metrics.prometheus_port,
                                          lambda: self.latest_snapshot)
        except MetricsUnavailable as exc:
            log.warning("%s; the agent runs on without metrics", exc)
            return None
        log.info("Prometheus metrics on http://%s:%d/metrics", cfg.metrics.prometheus_host,
                 cfg.metrics.prometheus_port)
        if warning := exposure_warning(cfg.metrics.prometheus_host, cfg.metrics.prometheus_port):
            log.warning("%s", warning)
        return server

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

