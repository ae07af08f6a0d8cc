"""The running pipeline's health: the watchdog's stuck check, and the typed snapshot
(agent.service.snapshot) shared by telemetry, the status socket, metrics and diag."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.core.thermal import ThermalGovernor, ThermalReading
from agent.inference.worker import InferenceWorker
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue
from agent.service.snapshot import (
    BrokerHealth,
    CaptureStage,
    Eviction,
    FrameQueue,
    Health,
    HealthSnapshot,
    InferenceStage,
    OutboxHealth,
    Queues,
    SensorHealth,
    Stages,
    ThermalHealth,
)
from agent.sources.capture import CaptureWorker, MotionGate
from agent.storage.outbox import Outbox
from agent.sync.mqtt import MqttLink
from agent.sync.uplink import Uplink

# An open of an unreachable camera blocks until the backend gives up (FFmpeg: 30 s), and a
# restart would not bring the camera back: an open counts as hung only past this.
SOURCE_OPEN_STALL_S = 60.0


@dataclass
class PipelineHealth:
    """References to the live components; ``snapshot()`` reads them (event-loop thread)."""

    device: str
    site: str
    source: str
    model: str
    capture: CaptureWorker
    inference: InferenceWorker
    frames: BoundedQueue[CapturedFrame]
    outbox: Outbox
    uplink: Uplink
    link: MqttLink | None
    gate: MotionGate | None
    governor: ThermalGovernor
    started: float
    broker: str | None
    state: str = "running"
    thermal: ThermalReading | None = None
    storage_error: str | None = None  # the current one; None once a commit succeeds again
    storage_errors: int = 0  # failed commits since start
    last_storage_error: str | None = None  # kept after the storage recovers
    sensors: Any = None  # the SensorHub when sensors are configured
    stall_s: float = 10.0  # the watchdog's stall time, for the snapshot's problems
    # Results handed over by inference and not yet committed, and how many may be: when all
    # slots are held, inference waits for the storage, not for a hung stage.
    results_held: Callable[[], int] | None = None
    result_slots: int = 0
    # The outbox writer's own liveness (monotonic): when its loop last went round (committed,
    # failed, found nothing to do) and when its next retry is due; None while it is not running.
    writer_beat: float | None = None
    writer_retry_at: float = 0.0
    _progress: tuple[int, float] = (-1, 0.0)

    def storage_failed(self, error: str) -> None:
        """A commit failed (full or failing disk): degraded health, not a hang."""
        self.storage_errors += 1
        self.storage_error = self.last_storage_error = error

    def writer_went_round(self, retry_at: float = 0.0, now: float | None = None) -> None:
        """The outbox writer's heartbeat: once per pass of its loop."""
        self.writer_beat = time.monotonic() if now is None else now
        self.writer_retry_at = retry_at

    def writer_stopped(self) -> None:
        self.writer_beat = None

    def held_back_by_storage(self) -> bool:
        """True when every result slot holds an uncommitted result (inference must wait)."""
        return (self.results_held is not None and self.result_slots > 0
                and self.results_held() >= self.result_slots)

    def problems(self, stall_s: float, now: float | None = None) -> list[str]:
        """Why the pipeline counts as stuck (empty when it is not); feeds the watchdog.

        Stuck: inference made no progress for ``stall_s`` while frames wait, unless it waits
        for result slots that a live outbox writer keeps retrying to commit (a full disk is
        degraded health: a restart would lose the held results and not free the disk); the
        outbox writer's loop overdue by ``stall_s``; one read of the source that has not
        returned for ``stall_s`` (a hung RTSP/FIFO read leaves the frame queue empty), or one
        open for ``SOURCE_OPEN_STALL_S``; or
        the capture thread dead without ending."""
        now = time.monotonic() if now is None else now
        found: list[str] = []
        done = self.inference.stats.frames
        if done != self._progress[0]:
            self._progress = (done, now)
        idle = now - self._progress[1]
        if len(self.frames) > 0 and idle > stall_s and not self.held_back_by_storage():
            found.append(f"inference: frames wait but none was processed for {idle:.0f}s")
        if self.writer_beat is not None:
            overdue = now - max(self.writer_beat, self.writer_retry_at)
            if overdue > stall_s:
                found.append(f"outbox writer: no commit attempt for {overdue:.0f}s")
        blocked = self.capture.blocked_for(now)
        if blocked > (stall_s if self.capture.busy_with != "open"
                      else max(stall_s, SOURCE_OPEN_STALL_S)):
            found.append(f"capture: {self.capture.busy_with} of {self.source} has not returned "
                         f"for {blocked:.0f}s")
        if not self.capture.alive and not self.capture.stats.ended:
            found.append("capture: the thread died")
        return found

    def healthy(self, stall_s: float, now: float | None = None) -> bool:
        """False when a stage is stuck (see ``problems``). Feeds the watchdog."""
        return not self.problems(stall_s, now)

    def snapshot(self) -> HealthSnapshot:
        """The pipeline now, typed; its ``to_json()`` is what the status socket serves."""
        backlog, oldest = self.outbox.backlog()
        usage = self.outbox.usage()
        blobs, blob_bytes = self.uplink.blobs.backlog() if self.uplink.blobs else (0, 0)
        cap, inf = self.capture.stats, self.inference.stats
        disk = shutil.disk_usage(self.outbox.path.parent)
        now = time.monotonic()
        problems = self.problems(self.stall_s, now)
        link = self.link
        sensors = self.sensors.snapshot() if self.sensors is not None else {}
        return HealthSnapshot(
            state=self.state,
            health=Health(status="stuck" if problems else
                          "degraded" if self.storage_error else "ok", problems=tuple(problems)),
            pid=os.getpid(), device=self.device, site=self.site,
            uptime_s=round(time.monotonic() - self.started, 1),
            fps=round(self.inference.fps(), 2),
            stages=Stages(
                capture=CaptureStage(
                    alive=self.capture.alive, source=self.source, frames=cap.frames,
                    reconnects=cap.reconnects, last_error=cap.last_error,
                    blocked_s=round(self.capture.blocked_for(now), 1),
                    skipped_static=self.gate.skipped if self.gate else 0),
                inference=InferenceStage(
                    alive=self.inference.alive, model=self.model, frames=inf.frames,
                    failures=inf.failures, detections=inf.detections,
                    last_error=str(inf.fatal) if inf.fatal else None)),
            queues=Queues(frames=FrameQueue(
                depth=len(self.frames), capacity=self.frames.maxsize, policy=self.frames.policy,
                dropped=self.frames.stats.dropped)),
            outbox=OutboxHealth(
                backlog=backlog, oldest_unsent_s=round(oldest, 1) if oldest is not None else None,
                published=self.uplink.acked, ingested=self.uplink.ingested,
                acks_ignored=self.uplink.acks_ignored, acks_malformed=self.uplink.bad_acks,
                blobs_waiting=blobs, blob_bytes_waiting=blob_bytes,
                chunks_sent=self.uplink.chunks_sent, blobs_completed=self.uplink.blobs_completed,
                disk_free_bytes=disk.free, used_bytes=usage.used_bytes,
                budget_bytes=usage.budget_bytes, wal_bytes=usage.wal_bytes,
                evictions={k: Eviction(records=v["records"], bytes=v["bytes"])
                           for k, v in self.outbox.eviction_counts().items()},
                quarantined=str(self.outbox.quarantined) if self.outbox.quarantined else None,
                storage_error=self.storage_error, storage_errors=self.storage_errors,
                last_storage_error=self.last_storage_error,
                results_held=self.results_held() if self.results_held else 0),
            broker=BrokerHealth(url=self.broker, connected=bool(link and link.connected),
                                connects=link.connects if link else 0,
                                last_error=link.last_error if link else None),
            sensors={name: SensorHealth.from_json(s) for name, s in sensors.items()},
            thermal=ThermalHealth(temp_c=self.thermal.temp_c if self.thermal else None,
                                  throttled=self.thermal.throttled if self.thermal else False,
                                  level=self.governor.level),
            last_error=(self.storage_error or cap.last_error
                        or (link.last_error if link else None)))

    def telemetry(self) -> dict[str, Any]:
        """The flat health record published on ``telemetry`` (schema lepton.telemetry v1)."""
        return self.snapshot().telemetry()
