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

from agent.config.schema import AgentConfig, MotionSection, PipelineSection
from agent.core.uri import parse_sensor_uri, parse_source
from agent.errors import ConfigError


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


@dataclass(frozen=True)
class Problem:
    """Why a pipeline cannot run as configured. ``key`` is relative to ``pipelines.INDEX``
    (``stream``, ``source``, ...); empty for the list itself (``pipelines = []``)."""

    index: int
    key: str
    message: str
    fix: str


def label(index: int, stream: object) -> str:
    """How errors name a pipeline: ``pipelines[1] (stream "south")``."""
    if isinstance(stream, str):
        return f'pipelines[{index}] (stream "{stream}")' if stream.isprintable() else \
            f"pipelines[{index}] (stream {stream!r})"
    return f"pipelines[{index}]"


def thread_budget(config: AgentConfig) -> int:
    """``agent.thread_budget``, or the CPU count when 0; at least 1."""
    return config.agent.thread_budget or os.cpu_count() or 1


def resolve(config: AgentConfig, section: PipelineSection, count: int) -> PipelineSpec:
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
        attach_window_s=src.attach_window_s, motion=motion)


def _from_source(config: AgentConfig) -> PipelineSection:
    """Without ``[[pipelines]]``: the one pipeline ``[source]`` and ``[model]`` describe."""
    return PipelineSection(stream=config.source.stream, source=config.source.uri)


def pipeline_specs(config: AgentConfig) -> tuple[PipelineSpec, ...]:
    """Every pipeline of ``config``, resolved, in config order."""
    sections = config.pipelines if config.pipelines is not None else (_from_source(config),)
    return tuple(resolve(config, s, len(sections)) for s in sections)


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
            return []
        sections = config.pipelines
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
        streams.setdefault(section.stream, index)
        if device is not None:
            devices.setdefault(device, index)
    return found


def raise_first_problem(config: AgentConfig) -> None:
    """ConfigError for the first problem of ``config.pipelines`` (no file: the loader's own
    check names file and line first)."""
    for problem in problems(config)[:1]:
        raise ConfigError(problem.message, key=".".join(
            ["pipelines", *([str(problem.index), problem.key] if problem.key else [])]),
            fix=problem.fix)


def resolve_added(config: AgentConfig, section: PipelineSection) -> PipelineSpec:
    """A pipeline added at run time: resolved as one more pipeline, checked against the
    configured ones (a section equal to a configured one is that pipeline, not a clash)."""
    existing = config.pipelines if config.pipelines is not None else (_from_source(config),)
    if section in existing:
        return resolve(config, section, len(existing))
    sections = (*existing, section)
    for problem in problems(config, sections, first_new=len(existing))[:1]:
        raise ConfigError(problem.message, key=f"pipelines.{len(existing)}.{problem.key}",
                          fix=problem.fix)
    return resolve(config, section, len(sections))
