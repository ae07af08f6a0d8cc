"""``lepton-agent eval goals``: the counting goals of issue 16 (item 7), measured end to end.

Every figure comes from the agent itself (``eval counting``'s :func:`run_agent`: the real config
loader, ``AgentApp`` offline on the clip, pace fast, drop policy block, the run summary's
counts and the results' ``latency_ms``) against the truth's own crossings
(:func:`true_line_counts`, written apart from ``agent.core.analytics``):

1. **Count error** on ``scenes`` generated junction scenes (seeds 1..N) at 5 and at 15 fps: per
   line, class and direction the summed true and measured counts, the net error and its
   percentage (goal: <= 2 % each), and the per-scene absolute error (no cancellation between
   scenes), which is the stricter figure.
2. **Flicker**: a vehicle parked on a line, its anchor jittering across it inside the band,
   drawn alternately as a car and as a truck (so the detector's class flickers): the agent must
   count nothing there.
3. **Interval 3 vs 1**: the processed fps of the traffic model (``../shared/data/traffic``) with
   ``[analytics] interval = 3`` over ``interval = 1`` (goal >= 2.5x), and the count error of
   the default model on the same scenes with interval 3 (goal: within one percentage point of
   interval 1). The traffic model's classes (sedan, pickup_suv_van, large_veh_bus) are not the
   truth's (car, truck), so its count error cannot be measured against the truth.
4. **Cost share**: tracker + counting (``latency_ms["analytics"]``) over the frame's work
   (capture, preprocess, inference, postprocess, analytics), per model (goal <= 5 %).
5. **What limits it**: the same scenes with the truth's boxes as the detections
   (:func:`truth_as_detections`), all of them or only those at least 40 % / 70 % visible: the
   count error the tracker and the lines leave with a perfect detector.

The lines are placed from each scene's own geometry (:func:`scene_lines`): ``h-road`` across
the horizontal road, ``v-road`` across the vertical one; by default on the approaches (stop
bars before the junction), with ``placement="junction"`` inside the crossing.
"""

from __future__ import annotations

import statistics
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.bench.eval_tracking import (
    AgentRun,
    CountLine,
    CountRow,
    MotRow,
    count_rows,
    eval_config,
    read_mot,
    run_agent,
    true_line_counts,
)
from agent.errors import AgentError
from agent.sources.synthetic import JunctionScene, write_clip

SIZE = (640, 480)
TRAFFIC_MODEL = Path("../shared/data/traffic/traffic_model.tflite")
GOAL_ERROR = 0.02  # count error per line, class and direction
GOAL_INTERVAL_FPS = 2.5  # processed fps, interval 3 over interval 1
GOAL_INTERVAL_PP = 1.0  # count error, interval 3 within this many percentage points of interval 1
GOAL_SHARE = 0.05  # tracker + counting over the frame's work

Segment = tuple[str, tuple[float, float], tuple[float, float]]


PLACEMENTS = ("approach", "junction")


APPROACH_AT = 0.6  # of each arm, from the frame edge to the junction


def scene_lines(seed: int, width: int = SIZE[0], height: int = SIZE[1], density: float = 0.5,
                placement: str = "approach", approach_at: float = APPROACH_AT
                ) -> tuple[Segment, Segment]:
    """The two counting lines of scene ``seed``, normalized, from its road geometry (which the
    seed fixes whatever the fps): ``h-road`` across the horizontal road (crossed by its
    traffic), ``v-road`` across the vertical one, each spanning its road and 3 % beyond.

    ``approach`` (a stop bar before the junction, where counting lines go on real roads): in
    the longer arm of each road, 0.6 of the way from the frame edge to the junction, so a
    vehicle of either class is (nearly) whole in view when its anchor crosses. ``junction``:
    inside the crossing, ``h-road`` at the vertical road's lane boundary (horizontal vehicles
    cross it where vertical ones pass over them, hidden) and ``v-road`` 0.4 lane into the top
    lane (the horizontal vehicles' anchors stay >= 0.375 lane away); the hardest place to track
    through, since there the two roads' vehicles overlap."""
    if placement not in PLACEMENTS:
        raise AgentError(f"unknown line placement {placement!r}",
                         fix=f"use one of {', '.join(PLACEMENTS)}")
    s = JunctionScene(width, height, 15.0, seed=seed, density=density)
    margin_x, margin_y = 0.03 * width, 0.03 * height
    if placement == "junction":
        x = (s.road_left + s.road_right) / 2
        y = s.road_top + 0.4 * s.lane_height
    else:
        right_arm, bottom_arm = width - s.road_right, height - s.road_bottom
        k = approach_at
        x = k * s.road_left if s.road_left >= right_arm else width - k * right_arm
        y = k * s.road_top if s.road_top >= bottom_arm else height - k * bottom_arm
    h_road: Segment = ("h-road", (x / width, max(0.0, s.road_top - margin_y) / height),
                       (x / width, min(height, s.road_bottom + margin_y) / height))
    v_road: Segment = ("v-road", (max(0.0, s.road_left - margin_x) / width, y / height),
                       (min(width, s.road_right + margin_x) / width, y / height))
    return h_road, v_road


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def write_config(path: Path, lines: Sequence[Segment], settings: dict[str, Any] | None = None,
                 classes: Sequence[str] | None = None, band: float | None = None) -> Path:
    """An agent config with these ``[[lines]]`` (``band``: each line's hysteresis band, None
    the default) and ``settings`` (``{"analytics.interval": 3, "analytics.tracker.min_hits":
    2, "model.score_threshold": 0.4}``) as TOML tables; ``lines.band`` in ``settings`` sets
    ``band``."""
    tables: dict[str, dict[str, Any]] = {}
    for key, value in (settings or {}).items():
        if key == "lines.band":  # each [[lines]] table's own key, not a section's
            band = float(value)
            continue
        section, _, name = key.rpartition(".")
        if not section:
            raise AgentError(f"setting {key!r} names no section", fix="write SECTION.KEY=VALUE")
        tables.setdefault(section, {})[name] = value
    text = []
    for section in sorted(tables):
        text.append(f"[{section}]")
        text += [f"{k} = {_toml_value(v)}" for k, v in tables[section].items()]
    for name, p1, p2 in lines:
        text += ["[[lines]]", f'name = "{name}"',
                 f"points = [[{p1[0]:.6f}, {p1[1]:.6f}], [{p2[0]:.6f}, {p2[1]:.6f}]]"]
        if band is not None:
            text.append(f"band = {band!r}")
        if classes is not None:
            text.append("classes = [" + ", ".join(f'"{c}"' for c in classes) + "]")
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Scene:
    """A generated clip, its truth and the config with its lines."""

    seed: int
    fps: float
    clip: Path
    truth: Path
    lines: tuple[Segment, Segment]


def make_scene(workdir: Path, seed: int, fps: float, seconds: float,
               density: float = 0.5, placement: str = "approach") -> Scene:
    """Write scene ``seed`` at ``fps`` for ``seconds`` (its clip and MOT truth) under ``workdir``,
    with its lines placed so (:func:`scene_lines`)."""
    stem = workdir / f"s{seed}_{fps:g}fps"
    clip, truth = stem.with_suffix(".avi"), Path(f"{stem}.txt")
    write_clip(str(clip), SIZE[0], SIZE[1], fps, max(1, round(seconds * fps)), seed=seed,
               scene="junction", density=density, truth=str(truth))
    return Scene(seed, fps, clip, truth,
                 scene_lines(seed, *SIZE, density=density, placement=placement))


def run_scene(scene: Scene, workdir: Path, settings: dict[str, Any] | None = None,
              model: Path | None = None) -> tuple[AgentRun, list[CountRow]]:
    """``eval counting`` on one scene: the agent's run and the rows against the truth."""
    tag = "_".join(f"{k}={v}" for k, v in sorted((settings or {}).items()))
    config = write_config(workdir / f"{scene.clip.stem}{('_' + tag) if tag else ''}.toml",
                          scene.lines, settings)
    with tempfile.TemporaryDirectory(prefix="lepton-goal-", dir=workdir) as state:
        run = run_agent(eval_config(config, scene.clip, Path(state), model=model))
    return run, count_rows(run, read_mot(scene.truth), *SIZE)


@dataclass
class Tally:
    """Summed counts of one key (line, class, direction) over scenes."""

    true: int = 0
    measured: int = 0
    absolute: int = 0  # sum over scenes of |measured - true|

    def add(self, row: CountRow) -> None:
        self.true += row.true
        self.measured += row.measured
        self.absolute += abs(row.error)

    def to_json(self) -> dict[str, Any]:
        net = self.measured - self.true
        return {"true": self.true, "measured": self.measured, "error": net,
                "error_pct": round(100 * abs(net) / self.true, 2) if self.true else None,
                "scene_abs_error": self.absolute,
                "scene_abs_error_pct": round(100 * self.absolute / self.true, 2)
                if self.true else None}


@dataclass
class CountingFigures:
    """One fps and one setting over every scene."""

    fps: float
    settings: dict[str, Any]
    per_key: dict[tuple[str, str, str], Tally] = field(default_factory=dict)
    per_class: dict[tuple[str, str], Tally] = field(default_factory=dict)
    scenes: list[dict[str, Any]] = field(default_factory=list)
    analytics_ms: float = 0.0
    work_ms: float = 0.0
    results: int = 0
    model_sha256: str = ""

    def add(self, scene: Scene, run: AgentRun, rows: Sequence[CountRow]) -> None:
        for row in rows:
            self.per_key.setdefault((row.line, row.label, row.direction), Tally()).add(row)
            self.per_class.setdefault((row.label, row.direction), Tally()).add(row)
        self.scenes.append({"seed": scene.seed, "interval": run.interval,
                            "detector_interval": run.detector_interval,
                            "frames": run.frames_processed,
                            "dropped": run.frames_dropped, "fps": run.processing_fps,
                            "true": sum(r.true for r in rows),
                            "abs_error": sum(abs(r.error) for r in rows)})
        st = run.stages
        self.results += st.results
        self.analytics_ms += st.ms.get("analytics", 0.0)
        self.work_ms += sum(st.ms.get(s, 0.0) for s in ("capture", "preprocess", "inference",
                                                         "postprocess", "analytics"))
        self.model_sha256 = run.model_sha256

    @property
    def worst_pct(self) -> float:
        """The largest net error percentage over the keys with true crossings."""
        return max((100 * abs(t.measured - t.true) / t.true for t in self.per_key.values()
                    if t.true), default=0.0)

    @property
    def scene_abs_pct(self) -> float:
        """Per-scene absolute errors over every key, over all true crossings, in percent."""
        true = sum(t.true for t in self.per_key.values())
        return 100 * sum(t.absolute for t in self.per_key.values()) / true if true else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "fps": self.fps, "settings": self.settings, "model_sha256": self.model_sha256,
            "per_line_class_direction": [{"line": k[0], "class": k[1], "direction": k[2],
                                          **t.to_json()} for k, t in sorted(self.per_key.items())],
            "per_class_direction": [{"class": k[0], "direction": k[1], **t.to_json()}
                                    for k, t in sorted(self.per_class.items())],
            "true_total": sum(t.true for t in self.per_key.values()),
            "worst_error_pct": round(self.worst_pct, 2),
            "scene_abs_error_pct": round(self.scene_abs_pct, 2),
            "goal_met": self.worst_pct <= 100 * GOAL_ERROR,
            "analytics_share": round(self.analytics_ms / self.work_ms, 4) if self.work_ms else None,
            "analytics_ms_per_frame": round(self.analytics_ms / self.results, 4)
            if self.results else None,
            "scenes": self.scenes,
        }


def counting_figures(scenes: Sequence[Scene], workdir: Path, settings: dict[str, Any],
                     progress: Callable[[str], None] = lambda s: None) -> CountingFigures:
    """Run every scene (all of one fps) with ``settings``; the summed figures."""
    figures = CountingFigures(scenes[0].fps, dict(settings))
    for scene in scenes:
        run, rows = run_scene(scene, workdir, settings)
        figures.add(scene, run, rows)
        progress(f"{scene.fps:g} fps seed {scene.seed} {settings or ''}: "
                 f"|error| {sum(abs(r.error) for r in rows)} of {sum(r.true for r in rows)}")
    return figures


# -- the tracker on perfect detections -------------------------------------------------------------


def truth_as_detections(scenes: Sequence[Scene], settings: dict[str, Any],
                        min_visibility: float) -> dict[str, Any]:
    """What is left of the count error when the detector is perfect: the truth's boxes of every
    object at least ``min_visibility`` visible (MOT's 9th column), score 0.95 and the truth's
    class, go through ``agent.core.analytics`` (the config's tracker settings and label settle,
    one bucket) instead of the model. 0 keeps even wholly hidden objects; the default model was
    trained to find vehicles showing at least 40 % (models/make_default_model.py)."""
    from agent.config import load_config
    from agent.core.analytics import Analytics
    from agent.core.analytics.tracker import Observation

    labels = {0: "car", 1: "truck"}
    tallies: dict[tuple[str, str, str], Tally] = {}
    with tempfile.TemporaryDirectory(prefix="lepton-goal-") as tmp:
        for scene in scenes:
            path = write_config(Path(tmp) / "truth.toml", scene.lines, settings)
            spec = load_config(path).pipeline_specs()[0]
            assert spec.analytics is not None
            analytics = Analytics(lines=spec.analytics.lines, tracker=spec.analytics.tracker,
                                  bucket_seconds=1e9, wall_now=0.0, mono_now=0.0,
                                  label_settle_s=spec.analytics.label_settle_s)
            truth = read_mot(scene.truth)
            frames: dict[int, list[MotRow]] = {}
            for r in truth:
                frames.setdefault(r.frame, []).append(r)
            w, h = SIZE
            for f in range(1, max(frames) + 1):
                analytics.step([Observation((r.x / w, r.y / h, (r.x + r.w) / w, (r.y + r.h) / h),
                                            0.95, r.class_id, labels[r.class_id])
                                for r in frames.get(f, []) if r.visibility >= min_visibility],
                               f / scene.fps, f)
            measured: Counter[tuple[str, str, str]] = Counter()
            for bucket in analytics.close(partial=True):
                for row in bucket.counts:
                    measured[(row.key.rule, row.key.label, row.key.direction.value)] += row.count
            for name, p1, p2 in scene.lines:
                true = true_line_counts(truth, CountLine(name, p1, p2), w, h, labels)
                for label in labels.values():
                    for direction in ("in", "out"):
                        tallies.setdefault((name, label, direction), Tally()).add(CountRow(
                            name, label, direction, true[(label, direction)],
                            measured[(name, label, direction)]))
    true_total = sum(t.true for t in tallies.values())
    absolute = sum(t.absolute for t in tallies.values())
    worst = max((100 * abs(t.measured - t.true) / t.true for t in tallies.values() if t.true),
                default=0.0)
    return {"fps": scenes[0].fps, "min_visibility": min_visibility, "true_total": true_total,
            "scene_abs_error_pct": round(100 * absolute / true_total, 2) if true_total else None,
            "worst_error_pct": round(worst, 2)}


# -- flicker ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlickerFigures:
    """The parked, class-flickering vehicle on the line."""

    frames: int
    detected_frames: int  # frames whose results hold a detection at the vehicle
    labels: dict[str, int]  # the detected class at the vehicle, frames per label
    measured: int  # crossings the agent counted (must be 0)

    @property
    def flickered(self) -> bool:
        return len([n for n in self.labels.values() if n > 0]) >= 2

    def to_json(self) -> dict[str, Any]:
        return {"frames": self.frames, "detected_frames": self.detected_frames,
                "labels": self.labels, "measured": self.measured, "flickered": self.flickered,
                "goal_met": self.measured == 0 and self.flickered}


def write_flicker_clip(path: Path, fps: float, frames: int, seed: int = 7
                       ) -> tuple[Segment, tuple[float, float]]:
    """A junction background with one vehicle parked across the horizontal road's line: its
    anchor (bottom centre) jitters 0.8 band either side of the line and it is drawn as a car
    for 3 frames, then as a truck for 3 (same centre), so the detector's class flickers.
    Returns the line and the vehicle's centre (normalized)."""
    width, height = SIZE
    scene = JunctionScene(width, height, fps, seed=seed, density=0.5)
    rng = np.random.default_rng(seed)
    lane = 1  # a rightward lane of the horizontal road, away from the junction
    lane_top = scene.road_top + lane * scene.lane_height
    x_line = max(80.0, scene.road_left / 2)
    line: Segment = ("parked", (x_line / width, scene.road_top / height),
                     (x_line / width, scene.road_bottom / height))
    sprites = []
    for class_id, length_share, thick_share in ((0, 0.07, 0.55), (1, 0.16, 0.75)):
        length = round(width * length_share)
        thickness = max(2, round(scene.lane_height * thick_share))
        sprites.append(scene._sprite(class_id, length, thickness, 1, False))
    band_px = 0.01 * width
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    try:
        for i in range(frames):
            sprite = sprites[(i // 3) % 2]
            rows, cols = sprite.shape[:2]
            # The anchor is the box's bottom centre; the line is vertical, so its x decides.
            cx = x_line + float(rng.uniform(-0.8, 0.8)) * band_px
            x0 = round(cx - cols / 2)
            y0 = round(lane_top + (scene.lane_height - rows) / 2)
            frame = scene.background.copy()
            frame[y0:y0 + rows, x0:x0 + cols] = sprite
            writer.write(frame)
    finally:
        writer.release()
    centre = (x_line / width, (lane_top + scene.lane_height / 2) / height)
    return line, centre


def flicker_figures(workdir: Path, fps: float = 15.0, seconds: float = 10.0,
                    settings: dict[str, Any] | None = None, band: float | None = None
                    ) -> FlickerFigures:
    """Run the agent on the flicker clip with its line; what it detected there and counted.
    ``band``: the line's hysteresis band (None: the default)."""
    clip = workdir / "flicker.avi"
    frames = round(fps * seconds)
    line, centre = write_flicker_clip(clip, fps, frames)
    config = write_config(workdir / "flicker.toml", [line], settings, band=band)
    with tempfile.TemporaryDirectory(prefix="lepton-goal-", dir=workdir) as state:
        run = run_agent(eval_config(config, clip, Path(state)))
        labels = _labels_at(Path(state), centre)
    return FlickerFigures(run.frames_processed, sum(labels.values()), dict(labels),
                          sum(run.measured["parked"].values()))


def _labels_at(state_dir: Path, centre: tuple[float, float]) -> Counter[str]:
    """Per frame, the label of the best detection whose box holds ``centre``, from the results
    in the outbox."""
    import json

    from agent.storage.outbox import Outbox
    from agent.storage.report import outbox_path

    labels: Counter[str] = Counter()
    outbox = Outbox(outbox_path(state_dir))
    try:
        after = 0
        while page := outbox.fetch_unsent(after, 500):
            after = page[-1].id
            for rec in page:
                if "/results/" not in rec.topic:
                    continue
                best: tuple[float, str] | None = None
                for d in json.loads(rec.payload).get("detections", []):
                    ymin, xmin, ymax, xmax = d["box"]
                    inside = xmin <= centre[0] <= xmax and ymin <= centre[1] <= ymax
                    if inside and (best is None or d["score"] > best[0]):
                        best = (float(d["score"]), str(d["label"]))
                if best is not None:
                    labels[best[1]] += 1
    finally:
        outbox.close()
    return labels


# -- interval --------------------------------------------------------------------------------------


def interval_fps(clip: Path, model: Path, workdir: Path, rounds: int = 2,
                 threads: int | None = None) -> dict[str, Any]:
    """Processed fps of ``model`` on ``clip`` with interval 1 and 3, interleaved ``rounds``
    times (medians), the mean stage times of interval 1's detector frames and its analytics
    share. ``threads``: interpreter threads (None: the config's default)."""
    line = scene_lines(1)[0]
    fps: dict[int, list[float]] = {1: [], 3: []}
    shares: list[float] = []
    stages: list[dict[str, float]] = []
    for _ in range(rounds):
        for interval in (1, 3):
            config = write_config(workdir / f"traffic_i{interval}.toml", [line],
                                  {"analytics.interval": interval})
            with tempfile.TemporaryDirectory(prefix="lepton-goal-", dir=workdir) as state:
                run = run_agent(eval_config(config, clip, Path(state), model=model,
                                            threads=threads))
            fps[interval].append(run.processing_fps)
            if interval == 1 and run.stages.analytics_share is not None:
                shares.append(run.stages.analytics_share)
                stages.append(run.stages.to_json()["mean_ms"])
    f1, f3 = statistics.median(fps[1]), statistics.median(fps[3])
    return {"model": str(model), "threads": threads, "clip": clip.name, "rounds": rounds,
            "fps_interval_1": fps[1], "fps_interval_3": fps[3],
            "ratio": round(f3 / f1, 3) if f1 else None,
            "goal_met": bool(f1) and f3 / f1 >= GOAL_INTERVAL_FPS,
            "analytics_share_interval_1": round(statistics.median(shares), 4) if shares else None,
            "share_goal_met": bool(shares) and statistics.median(shares) <= GOAL_SHARE,
            "mean_ms_interval_1": stages[len(stages) // 2] if stages else None}


# -- everything ------------------------------------------------------------------------------------


def goals(*, scenes: int = 10, seconds: float = 60.0, fps_list: Sequence[float] = (5.0, 15.0),
          settings: dict[str, Any] | None = None, placement: str = "approach",
          interval: bool = True, flicker: bool = True,
          traffic_model: Path | None = TRAFFIC_MODEL, traffic_threads: Sequence[int] = (1, 2),
          workdir: Path | None = None,
          progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every goal's figures as one JSON-able report. ``settings`` apply to every run (the
    tuning knobs: ``analytics.tracker.*``, ``analytics.label_settle_s``, ``model.score_threshold``);
    ``interval`` False skips the interval-3 runs, ``traffic_model`` None its fps ratio (run
    with each of ``traffic_threads`` interpreter threads: 1 is this project's setting for the
    traffic model on 2 cores, docs/benchmarks.md)."""
    base = dict(settings or {})
    scene_lines(1, placement=placement)  # an unknown placement is said before any run
    if traffic_model is not None and not Path(traffic_model).is_file():
        raise AgentError(f"traffic model {traffic_model} does not exist",
                         fix="give --traffic-model PATH, or --no-traffic to skip the interval "
                             "fps ratio")
    with tempfile.TemporaryDirectory(prefix="lepton-goals-") as tmp:
        work = workdir or Path(tmp)
        try:
            work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AgentError(f"cannot use {work} as the work directory: "
                             f"{exc.strerror or exc}",
                             fix="give --workdir a directory that can be created") from exc
        report: dict[str, Any] = {"scenes": scenes, "seconds": seconds, "settings": base,
                                  "placement": placement,
                                  "size": f"{SIZE[0]}x{SIZE[1]}", "counting": [],
                                  "interval_3": []}
        for fps in fps_list:
            made = [make_scene(work, seed, fps, seconds, placement=placement)
                    for seed in range(1, scenes + 1)]
            one = counting_figures(made, work, base, progress)
            report["counting"].append(one.to_json())
            report.setdefault("truth_as_detections", []).extend(
                truth_as_detections(made, base, v) for v in (0.0, 0.4, 0.7))
            if interval:
                three = counting_figures(made, work, {**base, "analytics.interval": 3}, progress)
                j = three.to_json()
                j["vs_interval_1_pp"] = round(three.scene_abs_pct - one.scene_abs_pct, 2)
                # Within one point: no worse than interval 1 by more than that (better is fine).
                j["goal_met"] = three.scene_abs_pct - one.scene_abs_pct <= GOAL_INTERVAL_PP
                report["interval_3"].append(j)
        if flicker:
            report["flicker"] = flicker_figures(work, settings=base).to_json()
            progress(f"flicker: {report['flicker']}")
        if traffic_model is not None:
            clip = work / "traffic_clip.avi"
            # 40 s: at interval 3 a run lasts ~4 s, long enough that start-up does not weigh.
            write_clip(str(clip), SIZE[0], SIZE[1], 15.0, 600, seed=1, scene="junction")
            report["traffic_interval"] = [interval_fps(clip, Path(traffic_model), work,
                                                       rounds=3, threads=t)
                                          for t in traffic_threads]
            progress(f"traffic interval: {report['traffic_interval']}")
    return report
