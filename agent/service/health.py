"""The running agent's health: the watchdog's stuck check over every pipeline and the outbox
writer, and the typed snapshot (agent.service.snapshot) shared by telemetry, the status
socket, metrics and diag."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.core.thermal import ThermalGovernor, ThermalReading
from agent.service.pipelines import PipelineSet
from agent.service.snapshot import (
    BrokerHealth,
    Eviction,
    Health,
    HealthSnapshot,
    OtaStatus,
    OutboxHealth,
    SensorHealth,
    ThermalHealth,
    combined,
)
from agent.storage.outbox import Outbox
from agent.sync.mqtt import MqttLink
from agent.sync.uplink import Uplink


@dataclass
class StorageState:
    """The outbox writer's side of health: the commit error now (None once a commit succeeds
    again), failed commits since start, the last error (kept after recovery), and the
    writer's own liveness (monotonic): when its loop last went round (committed, failed, found
    nothing to do) and when its next retry is due; ``beat`` is None while it is not running.
    ``volatile``: why the outbox is a volatile one (the state directory could not be written
    at start, agent.storage.volatile): degraded health for the whole run."""

    error: str | None = None
    volatile: str | None = None
    errors: int = 0
    last_error: str | None = None
    beat: float | None = None
    retry_at: float = 0.0
    blobs_dropped: int = 0  # larger than the outbox's budget: the record went without them

    def failed(self, error: str) -> None:
        """A commit failed (full or failing disk): degraded health, not a hang."""
        self.errors += 1
        self.error = self.last_error = error

    def dropped_blob(self, error: str) -> None:
        """A blob no eviction could make room for was dropped; its record was committed."""
        self.blobs_dropped += 1
        self.last_error = error

    def went_round(self, retry_at: float = 0.0, now: float | None = None) -> None:
        """The outbox writer's heartbeat: once per pass of its loop."""
        self.beat = time.monotonic() if now is None else now
        self.retry_at = retry_at

    def stopped(self) -> None:
        self.beat = None


@dataclass
class RuntimeHealth:
    """References to the live components; ``snapshot()`` reads them (event-loop thread)."""

    device: str
    site: str
    pipelines: PipelineSet
    outbox: Outbox
    uplink: Uplink
    link: MqttLink | None
    governor: ThermalGovernor
    started: float
    broker: str | None
    storage: StorageState
    state: str = "running"
    thermal: ThermalReading | None = None
    sensors: Any = None  # the SensorHub when sensors are configured
    stall_s: float = 10.0  # the watchdog's stall time, for the snapshot's problems
    # Results handed over by inference and not yet committed, and how many may be: when all
    # slots are held, inference waits for the storage, not for a hung stage.
    results_held: Callable[[], int] | None = None
    result_slots: int = 0
    ota: Callable[[], OtaStatus] | None = None  # the OTA service's status, once it started

    def held_back_by_storage(self) -> bool:
        """True when every result slot holds an uncommitted result (inference must wait)."""
        return (self.results_held is not None and self.result_slots > 0
                and self.results_held() >= self.result_slots)

    def problems(self, stall_s: float, now: float | None = None) -> list[str]:
        """Why the agent counts as stuck (empty when it is not); feeds the watchdog.

        Stuck: a running pipeline's stage is stuck (``StageWatch.problems``, each named by its
        stream), or the outbox writer's loop is overdue by ``stall_s``. A failed pipeline is
        not stuck: it shows in status with its reason, and a restart would not mend it."""
        now = time.monotonic() if now is None else now
        found: list[str] = []
        held_back = self.held_back_by_storage()
        for pipeline in self.pipelines:
            if pipeline.watch is not None and not pipeline.done.is_set():
                found += [f"{pipeline.stream}: {problem}" for problem in
                          pipeline.watch.problems(stall_s, now, held_back)]
        if self.storage.beat is not None:
            overdue = now - max(self.storage.beat, self.storage.retry_at)
            if overdue > stall_s:
                found.append(f"outbox writer: no commit attempt for {overdue:.0f}s")
        return found

    def healthy(self, stall_s: float, now: float | None = None) -> bool:
        """False when a stage is stuck (see ``problems``). Feeds the watchdog."""
        return not self.problems(stall_s, now)

    def snapshot(self) -> HealthSnapshot:
        """The pipeline now, typed; its ``to_json()`` is what the status socket serves."""
        backlog, oldest = self.outbox.backlog()
        usage = self.outbox.usage()
        blobs, blob_bytes = self.uplink.blobs.backlog() if self.uplink.blobs else (0, 0)
        disk = shutil.disk_usage(self.outbox.path.parent)
        now = time.monotonic()
        problems = self.problems(self.stall_s, now)
        link = self.link
        sensors = self.sensors.snapshot() if self.sensors is not None else {}
        pipelines = self.pipelines.statuses(now)
        stages, queues, fps = combined(pipelines)
        failed = next((p.reason for p in pipelines if p.state == "failed"), None)
        return HealthSnapshot(
            state=self.state,
            health=Health(status="stuck" if problems else
                          "degraded" if self.storage.error or self.storage.volatile or failed
                          else "ok",
                          problems=tuple(problems)),
            pid=os.getpid(), device=self.device, site=self.site,
            uptime_s=round(time.monotonic() - self.started, 1),
            fps=fps, stages=stages, queues=queues, pipelines=pipelines,
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
                storage_error=self.storage.error, storage_errors=self.storage.errors,
                last_storage_error=self.storage.last_error,
                results_held=self.results_held() if self.results_held else 0,
                volatile=self.storage.volatile),
            broker=BrokerHealth(url=self.broker, connected=bool(link and link.connected),
                                connects=link.connects if link else 0,
                                last_error=link.last_error if link else None),
            sensors={name: SensorHealth.from_json(s) for name, s in sensors.items()},
            thermal=ThermalHealth(temp_c=self.thermal.temp_c if self.thermal else None,
                                  throttled=self.thermal.throttled if self.thermal else False,
                                  level=self.governor.level),
            last_error=(self.storage.error or stages.capture.last_error or failed
                        or (link.last_error if link else None)),
            ota=self.ota() if self.ota is not None else OtaStatus.unknown())

    def telemetry(self) -> dict[str, Any]:
        """The flat health record published on ``telemetry`` (schema lepton.telemetry v1)."""
        return self.snapshot().telemetry()
