"""The configuration schema. Unknown keys are rejected; every value is checked at load."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from agent.core.contract.topics import check_segment
from agent.core.outbox import DEFAULT_PRIORITIES
from agent.core.uri import parse_broker, parse_sensor_uri, parse_source

if TYPE_CHECKING:
    from agent.config.pipelines import PipelineSpec
    from agent.core.analytics.tracker import TrackerConfig


# A pipeline's events and counts have seq spaces of their own, named after its stream.
_DERIVED_STREAMS = (".events", ".counts")


def stream_name(value: str) -> str:
    """A pipeline's stream name: a topic segment that is not another stream's events or counts."""
    check_segment("stream", value)
    if value.endswith(_DERIVED_STREAMS):
        raise ValueError(f"stream {value!r} ends in {value[value.rindex('.'):]}, which names "
                         "another stream's events or counts (their own seq space); choose "
                         "another name")
    return value


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


def _source_uri(value: str) -> str:
    parse_source(value)
    return value


# A capture source URI and a stream name, checked the same in [source] and [[pipelines]].
SourceURI = Annotated[str, AfterValidator(_source_uri)]
StreamName = Annotated[str, AfterValidator(stream_name)]


DropPolicy = Literal["drop_oldest", "drop_newest", "block"]


class AgentSection(_Section):
    device_id: str = "dev-local"
    site: str = "default"
    state_dir: LaxPath = Path("state")
    board: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: float = Field(5.0, ge=0, le=600)
    status_socket: LaxPath | None = None
    # Interpreter threads all pipelines may run at once; 0: os.cpu_count(). 4096: no board has more.
    thread_budget: int = Field(0, ge=0, le=4096)

    @field_validator("device_id", "site")
    @classmethod
    def _segment(cls, value: str) -> str:
        return check_segment("identifier", value)


class SourceSection(_Section):
    uri: SourceURI = "synthetic://640x480@15"
    stream: StreamName = "cam0"
    pace: Literal["auto", "realtime", "fast"] = "auto"
    loop: bool = False
    max_frames: int = Field(0, ge=0, le=10**12)
    reconnect_initial_s: float = Field(0.5, gt=0, le=86_400)
    reconnect_max_s: float = Field(30.0, gt=0, le=86_400)
    queue_size: int = Field(4, ge=1, le=1024)
    attach_sensors: list[str] = []
    attach_window_s: float = Field(2.0, gt=0, le=3600)
    drop_policy: DropPolicy | Literal["auto"] = "auto"

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
    # Each commit writes a few SQLite pages whatever it holds: a camera at 15 fps committed
    # every 50 ms wrote 4.9x its results' bytes to the card, every second 1.85x (bench sync,
    # docs/durability.md). A second is the durability interval's default: a power cut loses
    # that much anyway. Track events and closed counts are committed without the wait.
    commit_interval_ms: int = Field(1000, ge=0, le=10_000)

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
    """Blobs sent in chunks on ``shards/{blob}``: frame and track snapshots, segmentation masks."""

    chunk_size: ByteSize = Field(ByteSize(64 * 1024), ge=1024, le=1024 * 1024)
    expiry_s: float = Field(7 * 24 * 3600.0, ge=0, le=10 * 365 * 86_400)
    in_flight: int = Field(4, ge=1, le=256)
    snapshot_interval_s: float = Field(0.0, ge=0, le=86_400, description="0: no snapshots")
    snapshot_min_detections: int = Field(1, ge=0, le=10_000)
    snapshot_quality: int = Field(80, ge=10, le=100)
    mask_interval_s: float = Field(0.0, ge=0, le=86_400,
                                   description="segmentation: a PNG class map at most this often; 0: none")


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


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) of ``[web] listen`` as (host, port); ValueError otherwise."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"listen {value!r} is not HOST:PORT (e.g. 127.0.0.1:8080, 0.0.0.0:8443, "
                         "[::1]:8080); an empty string turns the web console off")
    return host, int(port)


class WebSection(_Section):
    """``[web]``: the web console (docs/web.md). On loopback by default; any other address
    requires a login (users from ``$CREDENTIALS_DIRECTORY/{users_credential}``)."""

    listen: str = "127.0.0.1:8080"  # "": off
    tls: bool = False  # HTTPS with the device certificate ([mqtt] tls_cert_file, tls-key)
    users_credential: str = "web-users"  # file name in $CREDENTIALS_DIRECTORY: NAME:ROLE:HASH lines
    session_ttl_s: int = Field(8 * 3600, ge=60, le=30 * 86_400)
    live_fps: float = Field(5.0, gt=0, le=5.0)  # the live view's JPEGs per second, per viewer

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value

    @field_validator("users_credential")
    @classmethod
    def _credential(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value) or value.startswith("."):
            raise ValueError("a credential name is a file name: letters, digits, '_', '.', '-'")
        return value


class HomeAssistantSection(_Section):
    """``[homeassistant]``: Home Assistant MQTT discovery over the agent's own broker link
    (docs/web.md). Off by default."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"  # HA's own default; its birth is {prefix}/status
    node_id: str = ""  # "": the device id with characters HA refuses replaced by '_'
    interval_s: float = Field(10.0, ge=1, le=3600)  # how often the states are published

    @field_validator("discovery_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*", value):
            raise ValueError("a topic prefix of letters, digits, '_' and '-' segments, "
                             "joined by '/' (no wildcards)")
        return value

    @field_validator("node_id")
    @classmethod
    def _node(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError("a node id is letters, digits, '_' and '-' (what HA accepts)")
        return value


class KernelsSection(_Section):
    preprocess: Literal["native", "opencv"] = "native"


class OtaSection(_Section):
    """``[ota]``: model deployments on this device (docs/ota.md). ``health_s``,
    ``min_fps_ratio`` and ``transfer_timeout_s`` are what a ``deploy-model`` that does not
    name them gets."""

    # Release keys (Ed25519 PEM) the device trusts: ``.pub`` files, or folders of them. []: the
    # *.pub files in {state_dir}/ota/trusted. A rotation is two keys here.
    trusted_keys: list[LaxPath] = Field(default_factory=list, max_length=64)
    health_s: float = Field(10.0, ge=0, le=3600)
    min_fps_ratio: float = Field(0.5, ge=0, le=1)
    transfer_timeout_s: float = Field(300.0, gt=0, le=86_400)
    # The states' own deadlines (verifying 120 s, warming 120 s, self_test 180 s...) times
    # this: a slow board may need more.
    deadline_scale: float = Field(1.0, ge=0.1, le=100)
    clock_skew_threshold_s: float = Field(300.0, gt=0, le=10 * 365 * 86_400)

    @field_validator("trusted_keys")
    @classmethod
    def _keys(cls, value: list[Path]) -> list[Path]:
        if len(set(value)) != len(value):
            raise ValueError("a key or folder is named twice")
        return value


ANCHORS = ("bottom-center", "center", "top-center", "left-center", "right-center")
"""The values of ``agent.core.analytics.Anchor`` (not imported here: it pulls in numpy and lap,
which ``config check`` does not need; tests/test_analytics_config.py keeps the two equal)."""
AnchorName = Literal["bottom-center", "center", "top-center", "left-center", "right-center"]


class _RuleSection(_Section):
    """What a line and a zone share. Geometry (point count and range, a degenerate line, a
    self-intersecting polygon) and ``band`` are checked by the core's ``LineRule.of`` /
    ``ZoneRule.of`` when the pipeline is resolved (``agent.config.pipelines``)."""

    name: str
    # at most 256: the self-intersection check is quadratic (256 points: 33k edge pairs)
    points: list[list[float]] = Field(max_length=256)
    classes: list[str] | None = None  # None: every class
    anchor: AnchorName = "bottom-center"
    band: float = 0.01

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_segment("rule name", value)  # it is the ``rule`` of lepton.count entries

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty class filter counts nothing; leave classes out to count "
                             "every class")
        if value is not None and any(not c for c in value):
            raise ValueError("a class name cannot be empty")
        return value


class LineSection(_RuleSection):
    """One ``[[lines]]`` / ``[[pipelines.lines]]`` table: a directional counting line."""


class ZoneSection(_RuleSection):
    """One ``[[zones]]`` / ``[[pipelines.zones]]`` table: a polygon zone."""

    loiter_s: float | None = None  # None: no loitering events
    max_occupancy: int | None = None  # None: no overcrowding events


class TrackerSection(_Section):
    """``[analytics.tracker]``: every key of ``agent.core.analytics.TrackerConfig``, all
    optional (left out: the tracker's own default). The values are checked by TrackerConfig
    itself (``AnalyticsSection.tracker_config``); the ranges here are only those it leaves open."""

    high_score: float | None = None
    low_score: float | None = None
    new_track_score: float | None = Field(None, ge=0.0, le=1.0)
    match_similarity: float | None = None
    low_match_iou: float | None = None
    tentative_similarity: float | None = None
    match_buffer: float | None = Field(None, ge=0.0, le=10.0)
    tentative_buffer: float | None = Field(None, ge=0.0, le=10.0)
    min_hits: int | None = Field(None, le=1000)
    tentative_misses: int | None = Field(None, le=1000)
    max_age_s: float | None = Field(None, le=3600)
    trajectory_points: int | None = Field(None, le=100_000)
    edge_margin: float | None = Field(None, ge=0.0, lt=0.5)


DAY_S = 86_400


class AnalyticsSection(_Section):
    """``[analytics]``: defaults of every pipeline's tracking and counting."""

    interval: int = Field(1, ge=1, le=1000)
    # The tracker follows vehicles between detections only when they are close enough: on the
    # generated junction scenes (docs/analytics.md) the count error was 4.9-5.6 % with the
    # detector at 5 Hz or more, 8 % at 3.75 Hz, 20 % at 2.5 Hz, 46 % at 1.7 Hz.
    min_detector_hz: float = Field(5.0, ge=0.0, le=1000.0)
    bucket_s: int = Field(60, ge=1, le=DAY_S)
    label_settle_s: float = Field(2.0, ge=0.0, le=3600.0)
    tracker: TrackerSection = TrackerSection()

    @field_validator("bucket_s")
    @classmethod
    def _aligned(cls, value: int) -> int:
        # buckets start at whole multiples of bucket_s since the epoch; only a divisor of a day
        # puts a bucket boundary at every midnight (UTC), so 15m and 1h tallies add up
        if DAY_S % value:
            raise ValueError(f"{value} does not divide a day (86400 s), so its buckets would not "
                             "start at the same time every day; use a divisor such as 60, 300, "
                             "900, 3600")
        return value

    def tracker_config(self) -> TrackerConfig:
        """The tracker's thresholds: the keys set, the rest TrackerConfig's defaults.
        ValueError ``analytics.tracker.KEY: ...`` naming the (first set) key it is about."""
        from agent.core.analytics.tracker import TrackerConfig

        given = {k: v for k in TrackerSection.model_fields
                 if (v := getattr(self.tracker, k)) is not None}  # a dump writes None for unset
        try:
            return TrackerConfig(**given)
        except ValueError as exc:
            message = str(exc).removeprefix("tracker: ")
            named = sorted((m.start(), k) for k in given
                           if (m := re.search(rf"\b{k}\b", message)))  # the first one it names
            key = named[0][1] if named else sorted(given)[0]
            raise ValueError(f"analytics.tracker.{key}: {message}") from None


class PipelineSection(_Section):
    """One ``[[pipelines]]`` table: a stream name, a capture source and (optionally) a model.

    Every optional key left out (None) takes the matching key of ``[source]``, ``[model]`` or
    ``[motion]`` (``agent.config.pipelines.resolve``); ``motion`` keys it sets override only
    those keys of ``[motion]``."""

    stream: StreamName
    source: SourceURI
    model: LaxPath | None = None
    threads: int | None = Field(None, ge=1, le=64)
    pace: Literal["auto", "realtime", "fast"] | None = None
    drop_policy: DropPolicy | Literal["auto"] | None = None
    queue_size: int | None = Field(None, ge=1, le=1024)
    loop: bool | None = None
    max_frames: int | None = Field(None, ge=0, le=10**12)
    labels: LaxPath | None = None
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    attach_sensors: list[str] | None = None
    motion: MotionSection | None = None
    interval: int | None = Field(None, ge=1, le=1000)  # None: [analytics] interval
    lines: list[LineSection] = []
    zones: list[ZoneSection] = []


PIPELINES = TypeAdapter(list[PipelineSection])
LINES = TypeAdapter(list[LineSection])
ZONES = TypeAdapter(list[ZoneSection])
_BESIDE = ("pipelines", "lines", "zones")  # arrays of tables kept beside the [section] fields


class AgentConfig(_Section):
    """The whole configuration of one agent.

    ``[[pipelines]]`` is kept beside the fields (``pipelines``), not as one of them: every field
    of this model is a ``[section]`` table (or the ``[[sensors]]`` list), which the loader and
    the schema-driven tests rely on. It is accepted by ``model_validate`` and shown by
    ``model_dump`` as a key ``pipelines`` all the same. So are the top-level ``[[lines]]`` and
    ``[[zones]]`` of a single-pipeline config (``lines``, ``zones``)."""

    _pipelines: tuple[PipelineSection, ...] | None = PrivateAttr(default=None)
    _lines: tuple[LineSection, ...] = PrivateAttr(default=())
    _zones: tuple[ZoneSection, ...] = PrivateAttr(default=())

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
    analytics: AnalyticsSection = AnalyticsSection()
    web: WebSection = WebSection()
    ota: OtaSection = OtaSection()
    homeassistant: HomeAssistantSection = HomeAssistantSection()

    @model_validator(mode="after")
    def _attached_sensors_exist(self) -> AgentConfig:

        names = {parse_sensor_uri(s.uri).name for s in self.sensors}
        missing = [n for n in self.source.attach_sensors if n not in names]
        if missing:
            raise ValueError(f"source.attach_sensors: names {', '.join(missing)}, which no "
                             f"[[sensors]] entry is called (sensors: {', '.join(sorted(names)) or 'none'})")
        return self

    @model_validator(mode="after")
    def _tracker_valid(self) -> AgentConfig:
        if self.analytics.tracker != TrackerSection():  # else TrackerConfig's defaults: valid
            self.analytics.tracker_config()
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _take_pipelines(cls, data: Any, handler: ModelWrapValidatorHandler[AgentConfig]) -> AgentConfig:
        if not (isinstance(data, dict) and any(k in data for k in _BESIDE)):
            return handler(data)
        rest = {k: v for k, v in data.items() if k not in _BESIDE}
        config = handler(rest)
        found: dict[str, Any] = {}
        for name, adapter in (("pipelines", PIPELINES), ("lines", LINES), ("zones", ZONES)):
            if name not in data:
                continue
            try:
                found[name] = adapter.validate_python(data[name])
            except ValidationError as exc:  # the loader validates them first, with file and line
                first = exc.errors()[0]
                where = ".".join(str(p) for p in (name, *first["loc"]))
                raise ValueError(f"{where}: {first['msg']}") from None
        if found.get("lines") or found.get("zones"):
            config = config.with_rules(found.get("lines", ()), found.get("zones", ()))
        if "pipelines" in found:
            config = config.with_pipelines(found["pipelines"])
        return config

    @model_serializer(mode="wrap")
    def _show_pipelines(self, handler: SerializerFunctionWrapHandler,
                        info: SerializationInfo) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self._pipelines is not None:
            data["pipelines"] = [p.model_dump(mode=info.mode, exclude_unset=True)
                                 for p in self._pipelines]
        for name, rules in (("lines", self._lines), ("zones", self._zones)):
            if rules:
                data[name] = [r.model_dump(mode=info.mode, exclude_unset=True) for r in rules]
        return data

    @property
    def pipelines(self) -> tuple[PipelineSection, ...] | None:
        """The ``[[pipelines]]`` tables as written, or None when there are none (then
        ``[source]`` and ``[model]`` make the one pipeline)."""
        return self._pipelines

    @property
    def lines(self) -> tuple[LineSection, ...]:
        """The top-level ``[[lines]]``: the lines of the one pipeline of ``[source]``."""
        return self._lines

    @property
    def zones(self) -> tuple[ZoneSection, ...]:
        """The top-level ``[[zones]]``: the zones of the one pipeline of ``[source]``."""
        return self._zones

    def with_pipelines(self, sections: list[PipelineSection] | tuple[PipelineSection, ...],
                       *, check: bool = True) -> AgentConfig:
        """A copy of this config with these ``[[pipelines]]``; ``check``: refuse (ConfigError)
        what ``agent.config.pipelines.problems`` finds (duplicate streams, a shared camera,
        threads over the budget, unknown sensors, no pipeline, bad lines or zones, top-level
        ``[[lines]]``/``[[zones]]`` beside them)."""
        from agent.config.pipelines import raise_first_problem

        copy = self.model_copy()
        copy._pipelines = tuple(sections)
        if check:
            raise_first_problem(copy)
        return copy

    def with_rules(self, lines: list[LineSection] | tuple[LineSection, ...],
                   zones: list[ZoneSection] | tuple[ZoneSection, ...],
                   *, check: bool = True) -> AgentConfig:
        """A copy of this config with these top-level ``[[lines]]`` and ``[[zones]]``;
        ``check``: refuse (ConfigError) what ``problems`` finds in them."""
        from agent.config.pipelines import raise_first_problem

        copy = self.model_copy()
        copy._lines, copy._zones = tuple(lines), tuple(zones)
        if check:
            raise_first_problem(copy)
        return copy

    def thread_budget(self) -> int:
        """Interpreter threads all pipelines may run at once: ``agent.thread_budget``, or the
        number of CPU cores when it is 0; at least 1."""
        from agent.config.pipelines import thread_budget

        return thread_budget(self)

    def pipeline_specs(self) -> tuple[PipelineSpec, ...]:
        """Every pipeline, resolved against ``[source]``/``[model]``/``[motion]``, in config order
        (one from ``[source]`` and ``[model]`` when there is no ``[[pipelines]]``)."""
        from agent.config.pipelines import pipeline_specs

        return pipeline_specs(self)

    def resolve_pipeline(self, section: PipelineSection) -> PipelineSpec:
        """A pipeline added at run time, with the same defaults and checks as a configured one
        (counted as one more pipeline); ConfigError when it clashes with the configured ones."""
        from agent.config.pipelines import resolve_added

        return resolve_added(self, section)
