"""The configuration schema. Unknown keys are rejected; every value is checked at load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from agent.core.contract.topics import check_segment
from agent.core.outbox import DEFAULT_PRIORITIES
from agent.core.uri import parse_broker, parse_sensor_uri, parse_source


class _Section(BaseModel):
    # strict: TOML has real types, so a bool is never taken as a number (true -> 1.0), a number
    # never as a bool, nor a string as a number; an int is still a valid float. No inf or nan.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _no_nul(path: Path) -> Path:
    if "\x00" in str(path):
        raise ValueError("a path cannot hold a NUL byte")
    return path


# Paths come from TOML and flags as strings.
LaxPath = Annotated[Path, Field(strict=False), AfterValidator(_no_nul)]


DropPolicy = Literal["drop_oldest", "drop_newest", "block"]


class AgentSection(_Section):
    device_id: str = "dev-local"
    site: str = "default"
    state_dir: LaxPath = Path("state")
    board: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: float = Field(5.0, ge=0, le=600)
    status_socket: LaxPath | None = None

    @field_validator("device_id", "site")
    @classmethod
    def _segment(cls, value: str) -> str:
        return check_segment("identifier", value)


class SourceSection(_Section):
    uri: str = "synthetic://640x480@15"
    stream: str = "cam0"
    pace: Literal["auto", "realtime", "fast"] = "auto"
    loop: bool = False
    max_frames: int = Field(0, ge=0, le=10**12)
    reconnect_initial_s: float = Field(0.5, gt=0, le=86_400)
    reconnect_max_s: float = Field(30.0, gt=0, le=86_400)
    queue_size: int = Field(4, ge=1, le=1024)
    attach_sensors: list[str] = []
    attach_window_s: float = Field(2.0, gt=0, le=3600)
    drop_policy: DropPolicy | Literal["auto"] = "auto"

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        parse_source(value)
        return value

    @field_validator("stream")
    @classmethod
    def _stream(cls, value: str) -> str:
        return check_segment("stream", value)

    @model_validator(mode="after")
    def _backoff(self) -> SourceSection:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be >= reconnect_initial_s")
        return self


class ModelSection(_Section):
    path: LaxPath = Path("models/lepton-vehicles-tiny")
    num_threads: int = Field(2, ge=1, le=64)
    delegate: Literal["xnnpack", "none", "reference"] = "xnnpack"
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    labels: LaxPath | None = None  # label file for a bare model (default: MODEL_labels.txt beside it)


class MqttSection(_Section):
    broker: str | None = "mqtt://127.0.0.1:1883"
    client_id: str | None = None
    username: str | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, le=2**32 - 1)  # MQTT 5: four bytes
    publish_window: int = Field(100, ge=1, le=65535)
    tls_ca_file: LaxPath | None = None
    tls_cert_file: LaxPath | None = None
    telemetry_interval_s: float = Field(30.0, gt=0, le=86_400)
    reconnect_initial_s: float = Field(0.5, gt=0, le=86_400)
    reconnect_max_s: float = Field(60.0, gt=0, le=86_400)

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str | None) -> str | None:
        if value:
            parse_broker(value)
        return value or None


class OutboxSection(_Section):
    """The durable outbox: one disk budget for everything it keeps, priorities per class."""

    budget_bytes: ByteSize = Field(ByteSize(256 * 1024 * 1024), ge=256 * 1024, le=2**50)
    priorities: dict[str, Annotated[int, Field(ge=0, le=1000)]] = Field(
        default_factory=lambda: dict(DEFAULT_PRIORITIES))
    durability_interval_s: float = Field(1.0, ge=0, le=3600)
    commit_interval_ms: int = Field(50, ge=0, le=10_000)

    @field_validator("priorities")
    @classmethod
    def _classes(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(DEFAULT_PRIORITIES))
        if unknown:
            raise ValueError(f"unknown record class(es) {', '.join(unknown)}; the classes are "
                             f"{', '.join(sorted(DEFAULT_PRIORITIES))}")
        return value
    keep_delivered: int = Field(10_000, ge=0, le=10**9)
    delivery: Literal["ingested", "broker"] = "ingested"
    ack_timeout_s: float = Field(30.0, gt=0, le=86_400)


class SensorSection(_Section):
    """One serial sensor: ``uri`` names port, baud, protocol and sensor name."""

    uri: str
    record_interval_s: float = Field(5.0, ge=0, le=86_400, description="0: a record per reading/window")
    model: LaxPath | None = None
    anomaly_on: float = Field(0.7, ge=0, le=1)
    anomaly_off: float = Field(0.4, ge=0, le=1)
    anomaly_min_windows: int = Field(2, ge=1, le=1000)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:

        parse_sensor_uri(value)
        return value

    @model_validator(mode="after")
    def _thresholds(self) -> SensorSection:
        if self.anomaly_off > self.anomaly_on:
            raise ValueError("anomaly_off must be <= anomaly_on (hysteresis)")
        return self


class ShardsSection(_Section):
    """Blobs sent in chunks on ``shards/{blob}``: event snapshots for now."""

    chunk_size: ByteSize = Field(ByteSize(64 * 1024), ge=1024, le=1024 * 1024)
    expiry_s: float = Field(7 * 24 * 3600.0, ge=0, le=10 * 365 * 86_400)
    in_flight: int = Field(4, ge=1, le=256)
    snapshot_interval_s: float = Field(0.0, ge=0, le=86_400, description="0: no snapshots")
    snapshot_min_detections: int = Field(1, ge=0, le=10_000)
    snapshot_quality: int = Field(80, ge=10, le=100)


class MotionSection(_Section):
    """Motion gating: skip inference on static scenes, but run at least every ``every_n`` frames."""

    enabled: bool = False
    min_score: float = Field(0.002, ge=0.0, le=1.0)
    every_n: int = Field(15, ge=1, le=10**6)
    grid_width: int = Field(160, ge=8, le=1024)
    pixel_threshold: int = Field(25, ge=0, le=255)
    learning_rate: float = Field(0.05, gt=0.0, le=1.0)


class ThermalSection(_Section):
    """Lower the inference rate step by step when hot or throttled; recover when cool."""

    enabled: bool = True
    max_temp_c: float = Field(75.0, ge=30, le=120)
    hysteresis_c: float = Field(5.0, ge=0, le=30)
    step_c: float = Field(3.0, ge=0, le=20)
    max_level: int = Field(3, ge=1, le=6)
    poll_s: float = Field(5.0, gt=0, le=600)
    sysfs: LaxPath = Path("/sys")


class MetricsSection(_Section):
    """Prometheus endpoint; off unless a port is given. Binds to localhost by default."""

    prometheus_port: int = Field(0, ge=0, le=65535)
    prometheus_host: str = "127.0.0.1"


class KernelsSection(_Section):
    preprocess: Literal["native", "opencv"] = "native"


class AgentConfig(_Section):
    """The whole configuration of one agent."""

    agent: AgentSection = AgentSection()
    source: SourceSection = SourceSection()
    model: ModelSection = ModelSection()
    mqtt: MqttSection = MqttSection()
    outbox: OutboxSection = OutboxSection()
    shards: ShardsSection = ShardsSection()
    sensors: list[SensorSection] = []
    kernels: KernelsSection = KernelsSection()
    motion: MotionSection = MotionSection()
    thermal: ThermalSection = ThermalSection()
    metrics: MetricsSection = MetricsSection()

    @model_validator(mode="after")
    def _attached_sensors_exist(self) -> AgentConfig:

        names = {parse_sensor_uri(s.uri).name for s in self.sensors}
        missing = [n for n in self.source.attach_sensors if n not in names]
        if missing:
            raise ValueError(f"source.attach_sensors: names {', '.join(missing)}, which no "
                             f"[[sensors]] entry is called (sensors: {', '.join(sorted(names)) or 'none'})")
        return self
