"""Pipelines: what the runtime runs, one per ``[[pipelines]]`` table (or one from ``[source]``).

A pipeline is a stream name, a capture source and a model. ``[source]``, ``[model]`` and
``[motion]`` are the defaults of every pipeline; ``resolve`` fills a ``PipelineSection`` from them
into a ``PipelineSpec``, the one type the runtime reads. ``problems`` finds what a set of
pipelines cannot run as (duplicate streams, two pipelines on one camera, threads over the budget,
sensors no ``[[sensors]]`` entry has); the loader turns the first into a ConfigError with the
file and line, ``AgentConfig.with_pipelines`` and ``resolve_pipeline`` without them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config.schema import AgentConfig, MotionSection, PipelineSection
from agent.core.uri import parse_sensor_uri, parse_source
from agent.errors import ConfigError

if TYPE_CHECKING:  # imported when a pipeline has rules: numpy and lap cost `config check` 0.2 s
    from agent.core.analytics.lines import LineRule
    from agent.core.analytics.tracker import TrackerConfig
    from agent.core.analytics.zones import ZoneRule


@dataclass(frozen=True)
class AnalyticsSpec:
    """One pipeline's tracking and counting, validated by the core: what the runtime gives
    ``agent.core.analytics.Analytics`` (``bucket_seconds=bucket_s``, the rest by name)."""

    lines: tuple[LineRule, ...]
    zones: tuple[ZoneRule, ...]
    tracker: TrackerConfig
    bucket_s: float  # whole seconds dividing a day (lepton.count v1 buckets are whole seconds)
    label_settle_s: float


@dataclass(frozen=True)
class PipelineSpec:
    """One pipeline, every value resolved: what the runtime runs."""

    stream: str
    source: str  # the source URI as written
    model: Path
    threads: int
    delegate: str  # from [model] delegate
    score_threshold: float | None
    labels: Path | None
    pace: str  # "auto" | "realtime" | "fast"
    drop_policy: str  # "auto" | "drop_oldest" | "drop_newest" | "block"
    queue_size: int
    loop: bool
    max_frames: int
    reconnect_initial_s: float
    reconnect_max_s: float
    attach_sensors: tuple[str, ...]
    attach_window_s: float
    motion: MotionSection  # the resolved motion settings
    interval: int = 1  # the detector runs on every interval-th frame; the tracker predicts between
    # ... lowered at the source's open so the detector runs at least this often (0: never)
    min_detector_hz: float = 0.0
    analytics: AnalyticsSpec | None = None  # None: no lines and no zones, so no tracker runs


@dataclass(frozen=True)
class Problem:
    """Why a pipeline cannot run as configured. ``key`` is relative to ``pipelines.INDEX``
    (``stream``, ``source``, ...); empty for the list itself (``pipelines = []``). ``top``: the
    key is relative to the top level instead (the single pipeline's ``lines.0.points``)."""

    index: int
    key: str
    message: str
    fix: str
    top: bool = False

    def path(self) -> tuple[str, ...]:
        """The key path from the top of the config: ``("pipelines", "1", "zones", "0", "points")``."""
        if self.top:
            return tuple(self.key.split("."))
        return ("pipelines", *((str(self.index), *self.key.split(".")) if self.key else ()))


class RuleError(ValueError):
    """A line or zone the core refuses; ``key`` relative to the pipeline (``zones.0.points``)."""

    def __init__(self, key: str, message: str, fix: str) -> None:
        super().__init__(message)
        self.key, self.message, self.fix = key, message, fix


_POINTS_FIX = ("give points as [x, y] pairs in [0, 1] (fractions of the frame's width and "
               "height): a line 2 distinct points, a zone 3 or more in order around it, its "
               "edges not crossing")
_KEY_FIXES = {"band": "band is a normalized distance on each side, in [0, 0.5) (default 0.01)",
              "loiter_s": "loiter_s is the dwell in seconds that raises a loitering event; give a "
                          "positive number, or leave it out for none",
              "max_occupancy": "max_occupancy is how many may be in the zone before an "
                               "overcrowding event; give 0 or more, or leave it out for none"}


def build_analytics(config: AgentConfig, section: PipelineSection,
                    name: str) -> AnalyticsSpec | None:
    """The pipeline's rules built and validated by the core (``LineRule.of``/``ZoneRule.of``),
    with ``[analytics]``; None without lines and zones. RuleError naming the key, with
    ``name`` (how errors name the pipeline) in its message."""
    if not section.lines and not section.zones:
        return None
    from agent.core.analytics.geometry import Anchor
    from agent.core.analytics.lines import LineRule
    from agent.core.analytics.zones import ZoneRule

    seen: dict[str, str] = {}
    for kind, rules in (("lines", section.lines), ("zones", section.zones)):
        for i, rule in enumerate(rules):
            if rule.name in seen:
                raise RuleError(
                    f"{kind}.{i}.name",
                    f'{name}: {kind}[{i}] is called "{rule.name}" like {seen[rule.name]}; the lines '
                    "and zones of a pipeline need names of their own (each is the rule of its counts)",
                    f'rename one of the two "{rule.name}"')
            seen[rule.name] = f"{kind}[{i}]"
    lines: list[LineRule] = []
    zones: list[ZoneRule] = []
    for kind, rules in (("lines", section.lines), ("zones", section.zones)):
        for i, rule in enumerate(rules):
            try:
                if kind == "lines":
                    lines.append(LineRule.of(rule.name, rule.points, classes=rule.classes,
                                             anchor=Anchor(rule.anchor), band=rule.band))
                else:
                    zone = section.zones[i]
                    zones.append(ZoneRule.of(rule.name, rule.points, classes=rule.classes,
                                             anchor=Anchor(rule.anchor), band=rule.band,
                                             loiter_s=zone.loiter_s,
                                             max_occupancy=zone.max_occupancy))
            except ValueError as exc:  # GeometryError is one
                key = next((k for k in _KEY_FIXES if f"{k} =" in str(exc)), "points")
                raise RuleError(f"{kind}.{i}.{key}", f"{name}: {exc}",
                                _KEY_FIXES.get(key, _POINTS_FIX)) from None
    analytics = config.analytics
    return AnalyticsSpec(tuple(lines), tuple(zones), analytics.tracker_config(),
                         float(analytics.bucket_s), analytics.label_settle_s)


SINGLE = "the pipeline of [source]"


def label(index: int, stream: object) -> str:
    """How errors name a pipeline: ``pipelines[1] (stream "south")``."""
    if isinstance(stream, str):
        return f'pipelines[{index}] (stream "{stream}")' if stream.isprintable() else \
            f"pipelines[{index}] (stream {stream!r})"
    return f"pipelines[{index}]"


def thread_budget(config: AgentConfig) -> int:
    """``agent.thread_budget``, or the CPU count when 0; at least 1."""
    return config.agent.thread_budget or os.cpu_count() or 1


def resolve(config: AgentConfig, section: PipelineSection, count: int,
            name: str = "the pipeline") -> PipelineSpec:
    """``section`` with what it leaves out taken from ``[source]``/``[model]``/``[motion]``;
    ``count`` pipelines share the thread budget (threads: ``model.num_threads`` for one,
    else ``min(model.num_threads, max(1, budget // count))``)."""
    src, model = config.source, config.model
    threads = section.threads
    if threads is None:
        threads = model.num_threads if count <= 1 else \
            min(model.num_threads, max(1, thread_budget(config) // count))
    motion = config.motion
    if section.motion is not None:  # only the keys the pipeline's table sets
        motion = motion.model_copy(update={k: getattr(section.motion, k)
                                           for k in section.motion.model_fields_set})
    try:
        analytics = build_analytics(config, section, name)
    except RuleError as exc:  # problems() refuses these first; here for a caller that did not
        raise ConfigError(exc.message, key=exc.key, fix=exc.fix) from None

    return PipelineSpec(
        stream=section.stream, source=section.source,
        model=section.model if section.model is not None else model.path,
        threads=threads, delegate=model.delegate,
        score_threshold=section.score_threshold if section.score_threshold is not None
        else model.score_threshold,
        labels=section.labels if section.labels is not None else model.labels,
        pace=section.pace or src.pace,
        drop_policy=section.drop_policy or src.drop_policy,
        queue_size=section.queue_size if section.queue_size is not None else src.queue_size,
        loop=section.loop if section.loop is not None else src.loop,
        max_frames=section.max_frames if section.max_frames is not None else src.max_frames,
        reconnect_initial_s=src.reconnect_initial_s, reconnect_max_s=src.reconnect_max_s,
        attach_sensors=tuple(section.attach_sensors if section.attach_sensors is not None
                             else src.attach_sensors),
        attach_window_s=src.attach_window_s, motion=motion,
        interval=section.interval if section.interval is not None else config.analytics.interval,
        min_detector_hz=config.analytics.min_detector_hz if analytics is not None else 0.0,
        analytics=analytics)


def _from_source(config: AgentConfig) -> PipelineSection:
    """Without ``[[pipelines]]``: the one pipeline ``[source]`` and ``[model]`` describe, with
    the top-level ``[[lines]]`` and ``[[zones]]``."""
    return PipelineSection(stream=config.source.stream, source=config.source.uri,
                           lines=list(config.lines), zones=list(config.zones))


def single_label(config: AgentConfig) -> str:
    """How errors name the one pipeline of ``[source]``."""
    return f'{SINGLE} (stream "{config.source.stream}")'


def pipeline_specs(config: AgentConfig) -> tuple[PipelineSpec, ...]:
    """Every pipeline of ``config``, resolved, in config order."""
    if config.pipelines is None:
        return (resolve(config, _from_source(config), 1, single_label(config)),)
    sections = config.pipelines
    return tuple(resolve(config, s, len(sections), label(i, s.stream))
                 for i, s in enumerate(sections))


_V4L2SRC = re.compile(r"(?:^|!)\s*v4l2src\b([^!]*)")
_LIBCAMERASRC = re.compile(r"(?:^|!)\s*libcamerasrc\b([^!]*)")
_NVARGUS = re.compile(r"(?:^|!)\s*nvarguscamerasrc\b([^!]*)")


def _prop(props: str, name: str) -> str | None:
    found = re.search(rf"(?:^|\s){re.escape(name)}\s*=\s*(\"[^\"]*\"|'[^']*'|\S+)", props)
    return found.group(1).strip("\"'") if found else None


def _device_path(path: str) -> str:
    # /dev/v4l/by-id/... links to /dev/videoN: on the device the link resolves to the camera
    return os.path.realpath(os.path.normpath(path))


def capture_device(uri: str) -> str | None:
    """The local camera ``uri`` opens, as a comparable name, or None for what several
    pipelines can read at once (files, rtsp/http cameras serving several clients, synthetic).

    v4l2 devices by path (``v4l2:///dev/video0``, a GStreamer ``v4l2src device=...``, whose
    default is /dev/video0, or a bare ``/dev/...`` path); ``libcamerasrc`` by camera name;
    Jetson's ``nvarguscamerasrc`` by sensor id."""
    parsed = parse_source(uri)
    if parsed.kind == "v4l2" or (parsed.kind == "file" and parsed.target.startswith("/dev/")):
        return "v4l2:" + _device_path(parsed.target)
    if parsed.kind != "gst":
        return None
    if found := _V4L2SRC.search(parsed.target):
        return "v4l2:" + _device_path(_prop(found.group(1), "device") or "/dev/video0")
    if found := _LIBCAMERASRC.search(parsed.target):
        return "libcamera:" + (_prop(found.group(1), "camera-name") or "(first camera)")
    if found := _NVARGUS.search(parsed.target):
        return "nvargus:" + (_prop(found.group(1), "sensor-id") or "0")
    return None


def problems(config: AgentConfig, sections: tuple[PipelineSection, ...] | None = None,
             *, first_new: int = 0) -> list[Problem]:
    """What ``sections`` (default: ``config.pipelines``) cannot run as, pipeline by pipeline;
    only pipelines from index ``first_new`` on are reported (each against all before it)."""
    if sections is None:
        if config.pipelines is None:
            try:
                build_analytics(config, _from_source(config), single_label(config))
            except RuleError as exc:
                return [Problem(0, exc.key, exc.message, exc.fix, top=True)]
            return []
        sections = config.pipelines
        beside = [n for n, rules in (("lines", config.lines), ("zones", config.zones)) if rules]
        if beside:
            return [rules_beside_pipelines(beside[0])]
    if not sections:
        return [Problem(0, "", "no pipeline: the list is empty",
                        "add a [[pipelines]] table with stream and source, or remove "
                        "`pipelines = []` to run the one pipeline of [source]")]
    budget = thread_budget(config)
    sensors = {parse_sensor_uri(s.uri).name for s in config.sensors}
    found: list[Problem] = []
    streams: dict[str, int] = {}
    devices: dict[str, int] = {}
    for index, section in enumerate(sections):
        name = label(index, section.stream)
        device = capture_device(section.source)
        if index >= first_new:
            if section.stream in streams:
                other = streams[section.stream]
                found.append(Problem(
                    index, "stream", f"{name} has the same stream name as pipelines[{other}]",
                    "give each [[pipelines]] table its own stream name (it is the topic segment "
                    "of its results)"))
            if device is not None and device in devices:
                other = devices[device]
                found.append(Problem(
                    index, "source",
                    f"{name} opens the same camera ({device}) as "
                    f"{label(other, sections[other].stream)}; a local camera serves one reader",
                    "give each pipeline its own camera, or run one pipeline on it (two on one "
                    "video file or one rtsp:// camera are fine)"))
            if section.threads is not None and section.threads > budget:
                found.append(Problem(
                    index, "threads",
                    f"{name} asks for {section.threads} threads, more than the thread budget "
                    f"of {budget}" + ("" if config.agent.thread_budget else " (the CPU count)"),
                    f"lower its threads to {budget} or less, or raise [agent] thread_budget"))
            missing = [s for s in section.attach_sensors or () if s not in sensors]
            if missing:
                found.append(Problem(
                    index, "attach_sensors",
                    f"{name} attaches {', '.join(missing)}, which no [[sensors]] entry is called "
                    f"(sensors: {', '.join(sorted(sensors)) or 'none'})",
                    "add a [[sensors]] entry with that name=, or remove it from attach_sensors"))
            try:
                build_analytics(config, section, name)
            except RuleError as exc:
                found.append(Problem(index, exc.key, exc.message, exc.fix))
        streams.setdefault(section.stream, index)
        if device is not None:
            devices.setdefault(device, index)
    return found


def rules_beside_pipelines(name: str) -> Problem:
    """Top-level ``[[lines]]`` (``name``) or ``[[zones]]`` written together with ``[[pipelines]]``."""
    return Problem(0, name, f"top-level [[{name}]] is set together with [[pipelines]]; top-level "
                   "lines and zones belong to the one pipeline of [source], and with "
                   "[[pipelines]] each pipeline has its own",
                   f"move each into the pipeline it counts on, as [[pipelines.{name}]] after that "
                   "pipeline's [[pipelines]] table", top=True)


def raise_first_problem(config: AgentConfig) -> None:
    """ConfigError for the first problem of ``config.pipelines`` (no file: the loader's own
    check names file and line first)."""
    for problem in problems(config)[:1]:
        raise ConfigError(problem.message, key=".".join(problem.path()), fix=problem.fix)


def resolve_added(config: AgentConfig, section: PipelineSection) -> PipelineSpec:
    """A pipeline added at run time: resolved as one more pipeline, checked against the
    configured ones (a section equal to a configured one is that pipeline, not a clash)."""
    existing = config.pipelines if config.pipelines is not None else (_from_source(config),)
    if section in existing:
        index = existing.index(section)
        return resolve(config, section, len(existing), label(index, section.stream))
    sections = (*existing, section)
    for problem in problems(config, sections, first_new=len(existing))[:1]:
        raise ConfigError(problem.message, key=".".join(problem.path()), fix=problem.fix)
    return resolve(config, section, len(sections), label(len(existing), section.stream))
