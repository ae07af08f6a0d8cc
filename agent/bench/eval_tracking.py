"""Tracking and counting measured against ground truth (issue 16, item 6).

- :func:`read_mot` reads MOT Challenge files (``frame,id,x,y,w,h,conf,class,visibility``), the
  ground truth ``lepton-agent synth-clip --truth`` writes;
- :func:`true_line_counts` is the reference count: per class and direction, how many objects of
  the truth crossed a line, from their bottom-centre trajectories. It is written here, apart
  from ``agent.core.analytics``, so that the counts it is compared with cannot share its bugs;
- :func:`tracking_scores` computes HOTA, IDF1, MOTA and ID switches with TrackEval's metric
  classes (the reference implementation of HOTA, Luiten et al. 2020), not with our own sums;
- :func:`run_clip` runs the default model and this project's tracker on every frame of a clip,
  giving the tracks as MOT rows (``eval tracking``);
- :func:`run_agent` runs the agent itself (``AgentApp``) on a clip with a config loaded by
  :func:`eval_config` through the agent's loader, giving the run summary's counts and the
  results' stage times (``eval counting``); :func:`count_rows` sets them beside the truth's,
  counted on the lines of that same loaded config (:func:`count_lines`).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import AgentError, SourceError

Point = tuple[float, float]


@dataclass(frozen=True)
class MotRow:
    """One box of one object in one frame. ``x, y, w, h`` in pixels (0-based, top-left)."""

    frame: int
    object_id: int
    x: float
    y: float
    w: float
    h: float
    conf: float = 1.0
    class_id: int = -1
    visibility: float = 1.0

    def line(self) -> str:
        return (f"{self.frame},{self.object_id},{self.x:g},{self.y:g},{self.w:g},{self.h:g},"
                f"{self.conf:g},{self.class_id},{self.visibility:g}")


def read_mot(path: Path) -> list[MotRow]:
    """Read a MOT Challenge file (ground truth or tracker output). Six columns at least; the
    7th to 9th (conf, class, visibility) default to 1, -1, 1; a 10th (MOT results' 3-D ``z``)
    is ignored. Raises AgentError naming the file and line of anything it cannot read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise AgentError(f"ground truth {path} does not exist",
                         fix="write one with `lepton-agent synth-clip CLIP --truth FILE`") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                         fix="give a MOT Challenge text file: frame,id,x,y,w,h,conf,class,visibility"
                         ) from exc
    rows: list[MotRow] = []
    seen: set[tuple[int, int]] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        where = f"{path}:{lineno}"
        fix = "each line is frame,id,x,y,w,h[,conf,class,visibility] (MOT Challenge)"
        if not 6 <= len(fields) <= 10:
            raise AgentError(f"{where}: {len(fields)} fields in {_short(line)}", fix=fix)
        try:
            frame, object_id = _whole(fields[0]), _whole(fields[1])
            x, y, w, h = (float(f) for f in fields[2:6])
            conf = float(fields[6]) if len(fields) > 6 else 1.0
            class_id = _whole(fields[7]) if len(fields) > 7 else -1
            visibility = float(fields[8]) if len(fields) > 8 else 1.0
        except ValueError:
            raise AgentError(f"{where}: not a number in {_short(line)}", fix=fix) from None
        if frame < 1:
            raise AgentError(f"{where}: frame {frame} (frames count from 1)", fix=fix)
        if not all(math.isfinite(v) for v in (x, y, w, h, conf, visibility)) or w <= 0 or h <= 0:
            raise AgentError(f"{where}: box {x:g},{y:g},{w:g},{h:g} is not a box (w and h > 0)",
                             fix=fix)
        if (frame, object_id) in seen:
            raise AgentError(f"{where}: object {object_id} twice in frame {frame}", fix=fix)
        seen.add((frame, object_id))
        rows.append(MotRow(frame, object_id, x, y, w, h, conf, class_id, visibility))
    if not rows:
        raise AgentError(f"{path} holds no boxes",
                         fix="give a MOT Challenge file written by `lepton-agent synth-clip --truth`")
    return rows


def _whole(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _short(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")


# -- the reference line count ----------------------------------------------------------------------


# Where the anchor sits in the box, as (share of the width from x, share of the height from y):
# the config's anchor names, written out here rather than taken from agent.core.analytics.
ANCHOR_AT: dict[str, tuple[float, float]] = {
    "bottom-center": (0.5, 1.0), "center": (0.5, 0.5), "top-center": (0.5, 0.0),
    "left-center": (0.0, 0.5), "right-center": (1.0, 0.5),
}


@dataclass(frozen=True)
class CountLine:
    """A counting line: normalized points, optional class filter, the box point that counts."""

    name: str
    p1: Point
    p2: Point
    classes: frozenset[str] | None = None
    anchor: str = "bottom-center"


def _side(p1: Point, p2: Point, a: Point) -> float:
    """(P2 - P1) x (A - P1) in image coordinates: > 0 is the ``in`` side."""
    return (p2[0] - p1[0]) * (a[1] - p1[1]) - (p2[1] - p1[1]) * (a[0] - p1[0])


def _meets_segment(p1: Point, p2: Point, a: Point, b: Point) -> bool:
    """Whether the move a -> b (whose ends are on opposite sides of the line) meets the segment
    P1P2 itself, ends included, rather than the line beyond them."""
    # Where the move meets the infinite line, as a fraction t along P1P2.
    da, db = _side(p1, p2, a), _side(p1, p2, b)
    s = da / (da - db)
    m = (a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1]))
    dx, dy = p2[0] - p1[0], p2[1] - p1[1]
    t = ((m[0] - p1[0]) * dx + (m[1] - p1[1]) * dy) / (dx * dx + dy * dy)
    return -1e-9 <= t <= 1 + 1e-9


def path_crossings(points: Sequence[Point], p1: Point, p2: Point) -> list[str]:
    """The net crossings of one object's path over the segment P1P2: ``["in"]``, ``["out"]`` or
    ``[]``. A move counts when its ends lie on opposite sides (points exactly on the line take
    the side they came from) and it meets the segment; a crossing followed by one back is
    cancelled, so an object wavering over the line and going on counts once, one that comes
    back counts nothing. A move jumping over the line between two frames counts like any."""
    stack: list[str] = []
    last: Point | None = None
    last_side = 0.0
    for point in points:
        side = _side(p1, p2, point)
        if side == 0.0:
            continue
        if last is not None and (side > 0) != (last_side > 0) and _meets_segment(p1, p2, last, point):
            direction = "in" if side > 0 else "out"
            if stack and stack[-1] != direction:
                stack.pop()
            else:
                stack.append(direction)
        last, last_side = point, side
    return stack


@dataclass(frozen=True)
class TrueTrajectory:
    """One object of the truth: its class and its normalized anchor point per frame."""

    object_id: int
    class_id: int
    points: tuple[Point, ...]


def trajectories(rows: Iterable[MotRow], width: int, height: int,
                 anchor: str = "bottom-center") -> list[TrueTrajectory]:
    """Each object's anchor path (bottom-centre by default) in normalized coordinates, in frame
    order; its class is the class most of its rows give."""
    ax, ay = ANCHOR_AT[anchor]
    by_id: dict[int, list[MotRow]] = {}
    for row in rows:
        by_id.setdefault(row.object_id, []).append(row)
    out: list[TrueTrajectory] = []
    for object_id in sorted(by_id):
        own = sorted(by_id[object_id], key=lambda r: r.frame)
        class_id = Counter(r.class_id for r in own).most_common(1)[0][0]
        points = tuple(((r.x + r.w * ax) / width, (r.y + r.h * ay) / height) for r in own)
        out.append(TrueTrajectory(object_id, class_id, points))
    return out


def true_line_counts(rows: Iterable[MotRow], line: CountLine, width: int, height: int,
                     labels: dict[int, str]) -> Counter[tuple[str, str]]:
    """How many objects of the truth crossed ``line``, by (class label, direction)."""
    counts: Counter[tuple[str, str]] = Counter()
    for traj in trajectories(rows, width, height, line.anchor):
        label = labels.get(traj.class_id, str(traj.class_id))
        if line.classes is not None and label not in line.classes:
            continue
        for direction in path_crossings(traj.points, line.p1, line.p2):
            counts[(label, direction)] += 1
    return counts


# -- the evaluator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingScores:
    """Class-agnostic CLEAR-MOT, identity and HOTA scores of tracks against the truth."""

    hota: float
    deta: float
    assa: float
    idf1: float
    mota: float
    motp: float
    id_switches: int
    fragmentations: int
    gt_ids: int
    tracker_ids: int
    gt_boxes: int
    tracker_boxes: int

    def to_json(self) -> dict[str, float | int]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of (n, 4) and (m, 4) ``x, y, w, h`` boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0][:, None], b[:, 0][None]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1][:, None], b[:, 1][None]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    out: np.ndarray = inter / np.maximum(union, 1e-12)
    return out


def _trackeval_metrics() -> tuple[Any, Any, Any]:
    try:
        # TrackEval prints a line about an optional dataset on import; keep stdout for our JSON.
        with contextlib.redirect_stdout(io.StringIO()):
            from trackeval.metrics import CLEAR, HOTA, Identity
    except ImportError as exc:
        raise AgentError(f"the tracking evaluator is not installed ({exc})",
                         fix="pip install --no-deps trackeval==1.3.0 (make setup does)") from exc
    return HOTA, CLEAR, Identity


def tracking_scores(truth: Sequence[MotRow], tracks: Sequence[MotRow],
                    frames: int | None = None) -> TrackingScores:
    """Score ``tracks`` against ``truth`` with TrackEval's HOTA, CLEAR and Identity metrics,
    class-agnostic, every truth row considered. ``frames`` defaults to the last frame of either."""
    hota_cls, clear_cls, identity_cls = _trackeval_metrics()
    last = max([r.frame for r in truth] + [r.frame for r in tracks] + [frames or 0])
    gt_index = {i: n for n, i in enumerate(sorted({r.object_id for r in truth}))}
    tr_index = {i: n for n, i in enumerate(sorted({r.object_id for r in tracks}))}
    per_gt: list[list[MotRow]] = [[] for _ in range(last)]
    per_tr: list[list[MotRow]] = [[] for _ in range(last)]
    for r in truth:
        per_gt[r.frame - 1].append(r)
    for r in tracks:
        per_tr[r.frame - 1].append(r)
    data: dict[str, Any] = {
        "num_timesteps": last, "num_gt_ids": len(gt_index), "num_tracker_ids": len(tr_index),
        "num_gt_dets": len(truth), "num_tracker_dets": len(tracks),
        "gt_ids": [], "tracker_ids": [], "similarity_scores": [],
    }
    for g, t in zip(per_gt, per_tr, strict=True):
        data["gt_ids"].append(np.array([gt_index[r.object_id] for r in g], dtype=int))
        data["tracker_ids"].append(np.array([tr_index[r.object_id] for r in t], dtype=int))
        data["similarity_scores"].append(_iou(np.array([[r.x, r.y, r.w, r.h] for r in g]).reshape(-1, 4),
                                              np.array([[r.x, r.y, r.w, r.h] for r in t]).reshape(-1, 4)))
    with contextlib.redirect_stdout(io.StringIO()):
        hota = hota_cls({"PRINT_CONFIG": False}).eval_sequence(data)
        clear = clear_cls({"PRINT_CONFIG": False}).eval_sequence(data)
        ident = identity_cls({"PRINT_CONFIG": False}).eval_sequence(data)
    return TrackingScores(
        hota=float(np.mean(hota["HOTA"])), deta=float(np.mean(hota["DetA"])),
        assa=float(np.mean(hota["AssA"])), idf1=float(ident["IDF1"]), mota=float(clear["MOTA"]),
        motp=float(clear["MOTP"]), id_switches=int(clear["IDSW"]), fragmentations=int(clear["Frag"]),
        gt_ids=len(gt_index), tracker_ids=len(tr_index), gt_boxes=len(truth),
        tracker_boxes=len(tracks))


# -- running the pipeline's parts over a clip ------------------------------------------------------


@dataclass
class ClipRun:
    """What the detector and tracker made of a clip."""

    width: int
    height: int
    frames: int
    fps: float
    labels: dict[int, str]
    tracks: list[MotRow] = field(default_factory=list)
    measured: dict[str, Counter[tuple[str, str]]] = field(default_factory=dict)


def open_clip(path: Path) -> Any:
    """An opened cv2.VideoCapture; SourceError naming the clip when it cannot be read."""
    import cv2

    if not path.is_file():
        raise SourceError("no such file", uri=str(path), fix="give a clip written by synth-clip")
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened()
    if ok:
        ok, _ = cap.read()
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    if not ok:
        cap.release()
        raise SourceError("OpenCV cannot read a frame of it", uri=str(path),
                          fix="give a video file OpenCV reads (.avi MJPG or .mp4)")
    return cap


def clip_size(path: Path) -> tuple[int, int]:
    """(width, height) of a clip's frames."""
    cap = open_clip(path)
    try:
        _, frame = cap.read()
        return int(frame.shape[1]), int(frame.shape[0])
    finally:
        cap.release()


def run_clip(clip: Path, model: Path, lines: Sequence[CountLine] = (), *, threads: int = 2,
             fps: float | None = None) -> ClipRun:
    """Run the model and ``agent.core.analytics`` (tracker, then the line counters, with the
    runtime's defaults) on every frame of ``clip``. Tracks are written as MOT rows for the
    confirmed tracks matched to a detection in that frame (ByteTrack's output); counts are
    the settled line counts after the clip ends (the open bucket closed)."""
    import cv2

    from agent.core.analytics import Analytics, LineRule, observations_from_detections
    from agent.inference.model import load_model
    from agent.inference.runner import ModelRunner

    runner = ModelRunner(load_model(model, num_threads=threads))
    labels = {int(k): v for k, v in runner.manifest.labels.items()}
    rules = [LineRule.of(ln.name, [ln.p1, ln.p2], classes=ln.classes) for ln in lines]
    cap = open_clip(clip)
    rate = fps or float(cap.get(cv2.CAP_PROP_FPS)) or 15.0
    analytics = Analytics(lines=rules, wall_now=0.0, mono_now=0.0, bucket_seconds=1e9)
    run = ClipRun(0, 0, 0, rate, labels)
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            run.frames += 1
            h, w = frame.shape[:2]
            run.width, run.height = w, h
            inference = runner.infer(runner.prepare(frame))
            now = run.frames / rate
            step = analytics.step(observations_from_detections(inference.detections), now,
                                  run.frames)
            for t in step.tracks:
                if t.confirmed and t.observed:
                    x1, y1, x2, y2 = t.box
                    run.tracks.append(MotRow(run.frames, t.track_id, x1 * w, y1 * h,
                                             (x2 - x1) * w, (y2 - y1) * h, t.score, t.class_id))
    finally:
        cap.release()
    for ln in lines:
        run.measured[ln.name] = Counter()
    for bucket in analytics.close(partial=True):
        for row in bucket.counts:
            if row.key.kind == "line":
                run.measured[row.key.rule][(row.key.label, row.key.direction.value)] += row.count
    return run


# -- running the agent itself over a clip ----------------------------------------------------------


# The stages of a result's latency_ms that are work done on the frame (``queue`` is waiting).
WORK_STAGES = ("capture", "preprocess", "inference", "postprocess", "analytics")


@dataclass(frozen=True)
class StageTimes:
    """Summed milliseconds per stage over the detector frames' results of a run."""

    results: int
    ms: dict[str, float]

    def mean(self, stage: str) -> float:
        return self.ms.get(stage, 0.0) / self.results if self.results else 0.0

    @property
    def analytics_share(self) -> float | None:
        """Tracker + counting over the frame's whole work (capture, preprocess, inference,
        postprocess, analytics), from the summed times; None without results."""
        work = sum(self.ms.get(s, 0.0) for s in WORK_STAGES)
        return self.ms.get("analytics", 0.0) / work if work > 0 else None

    def to_json(self) -> dict[str, Any]:
        share = self.analytics_share
        return {"results": self.results,
                "mean_ms": {s: round(self.mean(s), 4) for s in WORK_STAGES if s in self.ms},
                "analytics_share": round(share, 4) if share is not None else None}


@dataclass(frozen=True)
class AgentRun:
    """What ``lepton-agent run`` made of a clip: its run summary's figures and counts."""

    stream: str
    frames_captured: int
    frames_processed: int
    frames_dropped: int
    processing_fps: float
    interval: int  # as configured
    detector_interval: int  # as run (lowered by analytics.min_detector_hz on a slow source)
    model: Path
    model_sha256: str
    labels: dict[int, str]
    lines: tuple[CountLine, ...]
    measured: dict[str, Counter[tuple[str, str]]]  # per line: (label, direction) -> count
    stages: StageTimes


def eval_config(path: Path, source: Path, state_dir: Path, *, model: Path | None = None,
                threads: int | None = None, overrides: dict[str, dict[str, Any]] | None = None
                ) -> Any:
    """The agent config of ``path`` through the real loader, set up to measure one clip: the
    clip as the source, played as fast as the pipeline takes it without dropping a frame
    (pace fast, drop policy block, no loop, no frame limit), offline, without the web console,
    its outbox in ``state_dir``. ``overrides`` are further ``{section: {key: value}}`` (the goal harness's
    ``[analytics]``). A config of several ``[[pipelines]]`` is refused: one clip is one stream."""
    from agent.config import load_config

    play = {"pace": "fast", "drop_policy": "block", "loop": False, "max_frames": 0}
    layer: dict[str, dict[str, Any]] = {
        "mqtt": {"broker": ""},
        "agent": {"state_dir": str(state_dir), "log_level": "error"},
        "web": {"listen": ""},  # no console: runs in a row (and tests beside an agent) need no port
    }
    if model is not None:
        layer.setdefault("model", {})["path"] = str(model)
    if threads is not None:
        layer.setdefault("model", {})["num_threads"] = threads
    for section, values in (overrides or {}).items():
        layer.setdefault(section, {}).update(values)
    config = load_config(path, overrides=layer)
    if config.pipelines is None:  # the one pipeline of [source]: the clip is its source
        source_layer = {**layer.get("source", {}), "uri": str(source), **play}
        config = load_config(path, overrides={**layer, "source": source_layer})
    else:
        if len(config.pipelines) != 1:
            raise AgentError(f"{path} has {len(config.pipelines)} [[pipelines]]; eval counting "
                             "runs one clip through one pipeline",
                             fix="give a config with one [[pipelines]] table or top-level [[lines]]")
        pipeline = config.pipelines[0]
        config = config.with_pipelines([pipeline.model_copy(update={
            "source": str(source), **play, **({"model": model} if model is not None else {}),
            **({"threads": threads} if threads is not None else {})})])
    spec = config.pipeline_specs()[0]
    if spec.analytics is None or not spec.analytics.lines:
        from agent.errors import ConfigError

        raise ConfigError("no counting line", file=str(path), key="lines",
                          fix='add one: [[lines]] name = "stop-bar" points = [[0.5, 0.0], [0.5, 1.0]]')
    return config


def count_lines(config: Any) -> tuple[CountLine, ...]:
    """The counting lines of the config's pipeline, as the loader resolved them (points,
    class filter, anchor), for the reference count."""
    spec = config.pipeline_specs()[0]
    return tuple(CountLine(r.name, r.line.p1, r.line.p2, r.classes, r.anchor.value)
                 for r in spec.analytics.lines)


def _stage_times(state_dir: Path) -> StageTimes:
    """The latency_ms of every result record the run left in its outbox, summed per stage."""
    import json

    from agent.storage.outbox import Outbox
    from agent.storage.report import outbox_path

    totals: dict[str, float] = {}
    results = 0
    outbox = Outbox(outbox_path(state_dir))
    try:
        after = 0
        while True:
            page = outbox.fetch_unsent(after, 500)
            if not page:
                break
            after = page[-1].id
            for rec in page:
                if "/results/" not in rec.topic:
                    continue
                body = json.loads(rec.payload)
                results += 1
                for stage, ms in body.get("latency_ms", {}).items():
                    totals[stage] = totals.get(stage, 0.0) + float(ms)
    finally:
        outbox.close()
    return StageTimes(results, totals)


def run_agent(config: Any) -> AgentRun:
    """Run the agent (``AgentApp``, as ``lepton-agent run`` does) on ``config`` (from
    :func:`eval_config`) until its clip ends; the counts are the run summary's
    ``streams[].counts``, the stage times the results' ``latency_ms`` in its outbox."""
    import asyncio

    from agent.inference.model import load_model
    from agent.service.app import AgentApp

    spec = config.pipeline_specs()[0]
    summary = asyncio.run(AgentApp(config).run())
    stream = next((s for s in summary.streams if s.stream == spec.stream), None)
    if summary.error or stream is None or stream.state == "failed":
        why = summary.error or (stream.reason if stream is not None else "no pipeline ran")
        raise AgentError(f"the agent did not run the clip {spec.source}: {why}",
                         fix="run `lepton-agent run --config FILE --source CLIP` to see why")
    loaded = load_model(spec.model, num_threads=1, labels=spec.labels)
    labels = {int(k): str(v) for k, v in loaded.manifest.labels.items()}
    lines = count_lines(config)
    measured: dict[str, Counter[tuple[str, str]]] = {ln.name: Counter() for ln in lines}
    for row in stream.counts:
        if row["kind"] == "line":
            measured[row["rule"]][(row["label"], row["direction"])] += int(row["count"])
    return AgentRun(
        stream=stream.stream, frames_captured=stream.frames_captured,
        frames_processed=stream.frames_processed, frames_dropped=stream.frames_dropped,
        processing_fps=stream.processing_fps, interval=spec.interval,
        detector_interval=stream.detector_interval,
        model=Path(loaded.path), model_sha256=loaded.manifest.sha256,
        labels=labels, lines=lines, measured=measured,
        stages=_stage_times(config.agent.state_dir))


@dataclass(frozen=True)
class CountRow:
    """One line, class and direction: the truth's count, the agent's, and the difference."""

    line: str
    label: str
    direction: str
    true: int
    measured: int

    @property
    def error(self) -> int:
        return self.measured - self.true

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "class": self.label, "direction": self.direction,
                "true": self.true, "measured": self.measured, "error": self.error}


def count_rows(run: AgentRun, truth: Sequence[MotRow], width: int, height: int) -> list[CountRow]:
    """Per line, class (the line's filter, else the model's labels) and direction: true and
    measured counts."""
    rows: list[CountRow] = []
    for line in run.lines:
        true = true_line_counts(truth, line, width, height, run.labels)
        measured = run.measured[line.name]
        classes = sorted(set(run.labels.values()) if line.classes is None else line.classes)
        for label in classes:
            for direction in ("in", "out"):
                rows.append(CountRow(line.name, label, direction, true[(label, direction)],
                                     measured[(label, direction)]))
    return rows
