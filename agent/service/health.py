"""One snapshot of the running pipeline, shared by telemetry, the status socket and metrics."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from agent.core.thermal import ThermalGovernor, ThermalReading
from agent.inference.worker import InferenceWorker
from agent.pipeline.queues import BoundedQueue
from agent.sources.capture import CapturedFrame, CaptureWorker, MotionGate
from agent.storage.outbox import Outbox
from agent.sync.mqtt import MqttLink
from agent.sync.uplink import Uplink


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
    storage_error: str | None = None
    sensors: Any = None  # the SensorHub when sensors are configured
    _progress: tuple[int, float] = (-1, 0.0)

    def healthy(self, stall_s: float, now: float | None = None) -> bool:
        """False when a stage is stuck: frames wait but inference made no progress for
        ``stall_s``, or the capture thread died without ending. Feeds the watchdog."""
        now = time.monotonic() if now is None else now
        done = self.inference.stats.frames
        if done != self._progress[0]:
            self._progress = (done, now)
        stalled = len(self.frames) > 0 and now - self._progress[1] > stall_s
        capture_dead = not self.capture.alive and not self.capture.stats.ended
        return not stalled and not capture_dead

    def snapshot(self) -> dict[str, Any]:
        backlog, oldest = self.outbox.backlog()
        usage = self.outbox.usage()
        blobs, blob_bytes = self.uplink.blobs.backlog() if self.uplink.blobs else (0, 0)
        cap, inf = self.capture.stats, self.inference.stats
        disk = shutil.disk_usage(self.outbox.path.parent)
        return {
            "state": self.state,
            "pid": os.getpid(),
            "device": self.device,
            "site": self.site,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "fps": round(self.inference.fps(), 2),
            "stages": {
                "capture": {"alive": self.capture.alive, "source": self.source,
                            "frames": cap.frames, "reconnects": cap.reconnects,
                            "last_error": cap.last_error,
                            "skipped_static": self.gate.skipped if self.gate else 0},
                "inference": {"alive": self.inference.alive, "model": self.model,
                              "frames": inf.frames, "failures": inf.failures,
                              "detections": inf.detections,
                              "last_error": str(inf.fatal) if inf.fatal else None},
            },
            "queues": {"frames": {"depth": len(self.frames), "capacity": self.frames.maxsize,
                                  "policy": self.frames.policy,
                                  "dropped": self.frames.stats.dropped}},
            "outbox": {"backlog": backlog,
                       "oldest_unsent_s": round(oldest, 1) if oldest is not None else None,
                       "published": self.uplink.acked, "ingested": self.uplink.ingested,
                       "acks_ignored": self.uplink.acks_ignored,
                       "acks_malformed": self.uplink.bad_acks,
                       "blobs_waiting": blobs, "blob_bytes_waiting": blob_bytes,
                       "chunks_sent": self.uplink.chunks_sent,
                       "blobs_completed": self.uplink.blobs_completed,
                       "disk_free_bytes": disk.free,
                       "used_bytes": usage.used_bytes, "budget_bytes": usage.budget_bytes,
                       "wal_bytes": usage.wal_bytes, "evictions": self.outbox.eviction_counts(),
                       "quarantined": str(self.outbox.quarantined) if self.outbox.quarantined
                       else None, "storage_error": self.storage_error},
            "broker": {"url": self.broker,
                       "connected": bool(self.link and self.link.connected),
                       "connects": self.link.connects if self.link else 0,
                       "last_error": self.link.last_error if self.link else None},
            "sensors": self.sensors.snapshot() if self.sensors is not None else {},
            "thermal": {"temp_c": self.thermal.temp_c if self.thermal else None,
                        "throttled": self.thermal.throttled if self.thermal else False,
                        "level": self.governor.level},
            "last_error": (self.storage_error or cap.last_error
                           or (self.link.last_error if self.link else None)),
        }

    @staticmethod
    def cache_report(snap: dict[str, Any]) -> dict[str, Any]:
        """The outbox's disk budget figures, for telemetry and the retained status."""
        o = snap["outbox"]
        return {"used_bytes": o["used_bytes"], "budget_bytes": o["budget_bytes"],
                "evictions": o["evictions"], "quarantined": o["quarantined"],
                "storage_error": o["storage_error"]}

    def telemetry(self) -> dict[str, Any]:
        """The flat health record published on ``telemetry`` (schema lepton.telemetry v1)."""
        snap = self.snapshot()
        st = snap["stages"]
        return {"fps": snap["fps"], "frames_captured": st["capture"]["frames"],
                "frames_processed": st["inference"]["frames"],
                "frames_dropped": snap["queues"]["frames"]["dropped"],
                "queue_depth": {"frames": snap["queues"]["frames"]["depth"]},
                "backlog": snap["outbox"]["backlog"],
                "oldest_unsent_s": snap["outbox"]["oldest_unsent_s"],
                "detections": st["inference"]["detections"],
                "frames_skipped_static": st["capture"]["skipped_static"],
                "source_reconnects": st["capture"]["reconnects"],
                "source_error": st["capture"]["last_error"],
                "cpu_temp_c": snap["thermal"]["temp_c"], "throttled": snap["thermal"]["throttled"],
                "thermal_level": snap["thermal"]["level"],
                "disk_free_bytes": snap["outbox"]["disk_free_bytes"],
                "cache": self.cache_report(snap),
                "acks_ignored": snap["outbox"]["acks_ignored"],
                "uptime_s": snap["uptime_s"]}
