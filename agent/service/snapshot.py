"""The typed health snapshot: what the running agent reports about itself.

``RuntimeHealth.snapshot()`` builds one; the status socket serves its ``to_json()``, metrics
read its fields, telemetry is its ``telemetry()``, and ``lepton-agent status`` reads the
socket's JSON back with ``HealthSnapshot.from_json``. The JSON form is the status socket's and
diag's ``status.json``, unchanged: ``to_json(from_json(x)) == x``. Importing this module loads
nothing else of the project (the status command imports it without the runtime)."""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Literal

HealthStatus = Literal["ok", "degraded", "stuck"]


def _plain(value: Any) -> Any:
    """``value`` as JSON types: dataclasses as objects in field order, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Health:
    """stuck: a stage made no progress for the stall time (``problems`` say which);
    degraded: commits fail and results are held in memory, or the outbox is volatile (the
    state directory could not be written at start)."""

    status: HealthStatus
    problems: tuple[str, ...]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Health:
        return cls(status=d["status"], problems=tuple(d["problems"]))


@dataclass(frozen=True)
class CaptureStage:
    alive: bool
    source: str
    frames: int
    reconnects: int
    last_error: str | None
    blocked_s: float
    skipped_static: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CaptureStage:
        return cls(alive=d["alive"], source=d["source"], frames=d["frames"],
                   reconnects=d["reconnects"], last_error=d["last_error"],
                   blocked_s=d["blocked_s"], skipped_static=d["skipped_static"])


@dataclass(frozen=True)
class InferenceStage:
    alive: bool
    model: str
    frames: int
    failures: int
    detections: int
    last_error: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InferenceStage:
        return cls(alive=d["alive"], model=d["model"], frames=d["frames"],
                   failures=d["failures"], detections=d["detections"],
                   last_error=d["last_error"])


@dataclass(frozen=True)
class Stages:
    capture: CaptureStage
    inference: InferenceStage

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Stages:
        return cls(capture=CaptureStage.from_json(d["capture"]),
                   inference=InferenceStage.from_json(d["inference"]))


@dataclass(frozen=True)
class FrameQueue:
    depth: int
    capacity: int
    policy: str
    dropped: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FrameQueue:
        return cls(depth=d["depth"], capacity=d["capacity"], policy=d["policy"],
                   dropped=d["dropped"])


@dataclass(frozen=True)
class Queues:
    frames: FrameQueue

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Queues:
        return cls(frames=FrameQueue.from_json(d["frames"]))


@dataclass(frozen=True)
class PipelineStatus:
    """One pipeline: its state (starting, running, stopping, stopped, finished, failed), why
    it failed, and its two stages and frame queue."""

    stream: str
    state: str
    reason: str | None
    source: str
    model: str
    model_sha256: str | None
    threads: int
    fps: float
    capture: CaptureStage
    inference: InferenceStage
    frames: FrameQueue

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PipelineStatus:
        return cls(stream=d["stream"], state=d["state"], reason=d["reason"], source=d["source"],
                   model=d["model"], model_sha256=d["model_sha256"], threads=d["threads"],
                   fps=d["fps"], capture=CaptureStage.from_json(d["capture"]),
                   inference=InferenceStage.from_json(d["inference"]),
                   frames=FrameQueue.from_json(d["frames"]))

    def telemetry(self) -> dict[str, Any]:
        """This pipeline's entry in telemetry's ``pipelines`` list."""
        return {"stream": self.stream, "state": self.state, "reason": self.reason,
                "model": self.model, "fps": self.fps, "frames_captured": self.capture.frames,
                "frames_processed": self.inference.frames, "frames_dropped": self.frames.dropped,
                "detections": self.inference.detections, "source_error": self.capture.last_error,
                "source_reconnects": self.capture.reconnects}


@dataclass(frozen=True)
class Eviction:
    """Undelivered items of one class the disk budget dropped."""

    records: int
    bytes: int


@dataclass(frozen=True)
class OutboxHealth:
    backlog: int
    oldest_unsent_s: float | None
    published: int
    ingested: int
    acks_ignored: int
    acks_malformed: int
    blobs_waiting: int
    blob_bytes_waiting: int
    chunks_sent: int
    blobs_completed: int
    disk_free_bytes: int
    used_bytes: int
    budget_bytes: int | None
    wal_bytes: int
    evictions: dict[str, Eviction]
    quarantined: str | None
    storage_error: str | None
    storage_errors: int
    last_storage_error: str | None
    results_held: int
    # Why the outbox is volatile (RAM, not kept through a reboot): the state directory could
    # not be written at start; None on the state directory itself.
    volatile: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OutboxHealth:
        return cls(
            backlog=d["backlog"], oldest_unsent_s=d["oldest_unsent_s"],
            published=d["published"], ingested=d["ingested"], acks_ignored=d["acks_ignored"],
            acks_malformed=d["acks_malformed"], blobs_waiting=d["blobs_waiting"],
            blob_bytes_waiting=d["blob_bytes_waiting"], chunks_sent=d["chunks_sent"],
            blobs_completed=d["blobs_completed"], disk_free_bytes=d["disk_free_bytes"],
            used_bytes=d["used_bytes"], budget_bytes=d["budget_bytes"],
            wal_bytes=d["wal_bytes"],
            evictions={k: Eviction(records=v["records"], bytes=v["bytes"])
                       for k, v in d["evictions"].items()},
            quarantined=d["quarantined"], storage_error=d["storage_error"],
            storage_errors=d["storage_errors"], last_storage_error=d["last_storage_error"],
            results_held=d["results_held"], volatile=d.get("volatile"))


@dataclass(frozen=True)
class BrokerHealth:
    url: str | None
    connected: bool
    connects: int
    last_error: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BrokerHealth:
        return cls(url=d["url"], connected=d["connected"], connects=d["connects"],
                   last_error=d["last_error"])


@dataclass(frozen=True)
class SensorHealth:
    """One serial sensor; ``latest`` is its last reading ({"ts", "values"}) or None."""

    port: str
    protocol: str
    baud: int
    connected: bool
    bytes: int
    readings: int
    parse_errors: int
    last_parse_error: str | None
    reconnects: int
    last_error: str | None
    latest: dict[str, Any] | None
    windows: int
    score: float | None
    anomaly: bool | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SensorHealth:
        return cls(port=d["port"], protocol=d["protocol"], baud=d["baud"],
                   connected=d["connected"], bytes=d["bytes"], readings=d["readings"],
                   parse_errors=d["parse_errors"], last_parse_error=d["last_parse_error"],
                   reconnects=d["reconnects"], last_error=d["last_error"], latest=d["latest"],
                   windows=d["windows"], score=d["score"], anomaly=d["anomaly"])


@dataclass(frozen=True)
class ThermalHealth:
    temp_c: float | None
    throttled: bool
    level: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ThermalHealth:
        return cls(temp_c=d["temp_c"], throttled=d["throttled"], level=d["level"])


@dataclass(frozen=True)
class OtaStatus:
    """Model OTA on this device (docs/ota.md). ``slot`` ("a" or "b"), ``model`` and ``version``
    (the signed bundle version) of the first pipeline that runs a deployed model, None while
    every pipeline runs its configured model; ``deployment`` and ``state`` of the deployment in
    progress (None when none is); ``last_*`` of the last one that ended; the device clock's
    lag behind trusted time (None before the OTA service started) against
    ``[ota] clock_skew_threshold_s``."""

    slot: str | None
    model: str | None
    version: int | None
    deployment: str | None
    state: str | None
    last_deployment: str | None
    last_outcome: str | None
    last_reason: str | None
    clock_skew_s: float | None
    clock_skew_threshold_s: float | None
    clock_skew_exceeds: bool

    @classmethod
    def unknown(cls) -> OtaStatus:
        """Before the OTA service has started."""
        return cls(slot=None, model=None, version=None, deployment=None, state=None,
                   last_deployment=None, last_outcome=None, last_reason=None,
                   clock_skew_s=None, clock_skew_threshold_s=None, clock_skew_exceeds=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OtaStatus:
        return cls(slot=d["slot"], model=d["model"], version=d["version"],
                   deployment=d["deployment"], state=d["state"],
                   last_deployment=d["last_deployment"], last_outcome=d["last_outcome"],
                   last_reason=d["last_reason"], clock_skew_s=d["clock_skew_s"],
                   clock_skew_threshold_s=d["clock_skew_threshold_s"],
                   clock_skew_exceeds=d["clock_skew_exceeds"])

    def to_json(self) -> dict[str, Any]:
        """The ``ota`` object of telemetry and the retained status."""
        out: dict[str, Any] = _plain(self)
        return out

    @property
    def reported(self) -> bool:
        """Something to say in the retained status: a deployed model, a deployment, skew."""
        return bool(self.slot or self.deployment or self.last_outcome
                    or self.clock_skew_exceeds)


@dataclass(frozen=True)
class HealthSnapshot:
    """The whole pipeline at one moment."""

    state: str
    health: Health
    pid: int
    device: str
    site: str
    uptime_s: float
    fps: float
    stages: Stages  # all pipelines together: sums, and the first error
    queues: Queues
    pipelines: tuple[PipelineStatus, ...]
    outbox: OutboxHealth
    broker: BrokerHealth
    sensors: dict[str, SensorHealth]
    thermal: ThermalHealth
    last_error: str | None
    ota: OtaStatus

    def to_json(self) -> dict[str, Any]:
        """The status socket's JSON object (same keys, order and values as ever)."""
        out: dict[str, Any] = _plain(self)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HealthSnapshot:
        """A snapshot read back from the status socket. Raises KeyError or TypeError when
        ``d`` lacks a field (an agent of another version)."""
        return cls(
            state=d["state"], health=Health.from_json(d["health"]), pid=d["pid"],
            device=d["device"], site=d["site"], uptime_s=d["uptime_s"], fps=d["fps"],
            stages=Stages.from_json(d["stages"]), queues=Queues.from_json(d["queues"]),
            pipelines=tuple(PipelineStatus.from_json(p) for p in d["pipelines"]),
            outbox=OutboxHealth.from_json(d["outbox"]), broker=BrokerHealth.from_json(d["broker"]),
            sensors={k: SensorHealth.from_json(v) for k, v in d["sensors"].items()},
            thermal=ThermalHealth.from_json(d["thermal"]), last_error=d["last_error"],
            ota=OtaStatus.from_json(d["ota"]))

    def cache(self) -> dict[str, Any]:
        """The outbox's disk budget figures, for telemetry and the retained status."""
        o = self.outbox
        return {"used_bytes": o.used_bytes, "budget_bytes": o.budget_bytes,
                "evictions": _plain(o.evictions), "quarantined": o.quarantined,
                "storage_error": o.storage_error, "volatile": o.volatile}

    def telemetry(self) -> dict[str, Any]:
        """The flat health record published on ``telemetry`` (schema lepton.telemetry v1)."""
        cap, inf = self.stages.capture, self.stages.inference
        q, o, th = self.queues.frames, self.outbox, self.thermal
        return {"fps": self.fps, "frames_captured": cap.frames,
                "frames_processed": inf.frames, "frames_dropped": q.dropped,
                "queue_depth": {"frames": q.depth}, "backlog": o.backlog,
                "oldest_unsent_s": o.oldest_unsent_s, "detections": inf.detections,
                "frames_skipped_static": cap.skipped_static,
                "source_reconnects": cap.reconnects, "source_error": cap.last_error,
                "cpu_temp_c": th.temp_c, "throttled": th.throttled, "thermal_level": th.level,
                "disk_free_bytes": o.disk_free_bytes, "cache": self.cache(),
                "acks_ignored": o.acks_ignored, "health": self.health.status,
                "storage_errors": o.storage_errors, "last_storage_error": o.last_storage_error,
                "uptime_s": self.uptime_s,
                "pipelines": [p.telemetry() for p in self.pipelines],
                "ota": self.ota.to_json()}


def combined(pipelines: tuple[PipelineStatus, ...]) -> tuple[Stages, Queues, float]:
    """All pipelines as one: the snapshot's ``stages``, ``queues`` and ``fps`` (counts summed,
    the first error, any stage alive), so a reader of one pipeline's figures reads them as ever."""
    caps = [p.capture for p in pipelines]
    infs = [p.inference for p in pipelines]
    queues = [p.frames for p in pipelines]

    def first(values: list[str | None]) -> str | None:
        return next((v for v in values if v), None)

    def joined(values: list[str]) -> str:
        return ", ".join(dict.fromkeys(v for v in values if v))

    stages = Stages(
        capture=CaptureStage(
            alive=any(c.alive for c in caps), source=joined([c.source for c in caps]),
            frames=sum(c.frames for c in caps), reconnects=sum(c.reconnects for c in caps),
            last_error=first([c.last_error for c in caps]),
            blocked_s=max((c.blocked_s for c in caps), default=0.0),
            skipped_static=sum(c.skipped_static for c in caps)),
        inference=InferenceStage(
            alive=any(i.alive for i in infs), model=joined([i.model for i in infs]),
            frames=sum(i.frames for i in infs), failures=sum(i.failures for i in infs),
            detections=sum(i.detections for i in infs),
            last_error=first([i.last_error for i in infs])))
    frames = FrameQueue(depth=sum(q.depth for q in queues),
                        capacity=sum(q.capacity for q in queues),
                        policy=joined([q.policy for q in queues]),
                        dropped=sum(q.dropped for q in queues))
    return stages, Queues(frames=frames), round(sum(p.fps for p in pipelines), 2)
