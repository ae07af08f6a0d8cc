"""Tracker and counting: a generated scene with exact truth, ID switches against it, cost per frame.

``synth_scene`` draws vehicles (the default model's classes, car 0 and truck 1) that cross the
frame in lanes, in both directions along both axes, at varied speeds (2 to 8 s to cross; no
overtaking within a lane), entering and leaving at every edge, with box noise, missed
detections, low-score detections, car/truck label flicker, one-frame false positives, and
occlusion where two objects overlap, as where lanes cross (the farther one is missed or scored
low). It keeps every object's true box per frame, so counts and ID switches are computed from
the truth, not from any tracker.

``bench_analytics`` measures this package's tracker + one line + one zone against the tracker
libraries that are importable here (norfair, roboflow ``trackers``), on the same detections:
cost per frame at 10, 50 and 200 tracks, and ID switches and recall on a generated scene.
Run ``python -m agent.bench.analytics --json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import lap
import numpy as np

from agent.core.analytics import (
    Analytics,
    Anchor,
    ClosedBucket,
    Event,
    LineRule,
    Observation,
    TrackerConfig,
    ZoneRule,
)
from agent.core.analytics.geometry import Line, anchor_points
from agent.core.analytics.tracker import iou_matrix

Box = tuple[float, float, float, float]
CLASSES = (("car", 0), ("truck", 1))
VISIBLE_FRACTION = 0.3  # an object is in the truth (and detectable) while this much of its box is in view


@dataclass(frozen=True)
class SceneObject:
    """One object's straight path: box centre from ``start`` to ``end`` during [t0, t0 + duration]."""

    object_id: int
    label: str
    class_id: int
    start: tuple[float, float]
    end: tuple[float, float]
    t0: float
    duration: float
    w: float
    h: float

    def box_at(self, t: float) -> Box | None:
        """The unclipped box at time ``t``, None outside the object's life."""
        f = (t - self.t0) / self.duration
        if not 0.0 <= f <= 1.0:
            return None
        cx = self.start[0] + f * (self.end[0] - self.start[0])
        cy = self.start[1] + f * (self.end[1] - self.start[1])
        return (cx - self.w / 2, cy - self.h / 2, cx + self.w / 2, cy + self.h / 2)


@dataclass(frozen=True)
class SceneFrame:
    """One frame: its detections and the true visible (clipped) box of every object in view."""

    index: int
    t: float
    observations: tuple[Observation, ...]
    truth: dict[int, Box]


@dataclass(frozen=True)
class Scene:
    fps: float
    objects: tuple[SceneObject, ...]
    frames: tuple[SceneFrame, ...]

    def label_of(self, object_id: int) -> str:
        return self.objects[object_id].label


def _clip(box: Box) -> tuple[Box, float]:
    """The box clipped to the frame and the fraction of its area in view."""
    x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in box)
    full = (box[2] - box[0]) * (box[3] - box[1])
    return (x1, y1, x2, y2), max(0.0, x2 - x1) * max(0.0, y2 - y1) / full


@dataclass
class _Lane:
    """A lane of traffic in one direction, with its last object (the next neither overtakes nor overlaps)."""

    vertical: bool
    position: float
    forward: bool
    last: SceneObject | None = None


def _lanes() -> list[_Lane]:
    vertical = [_Lane(True, 0.1 + 0.1 * i, i % 2 == 0) for i in range(9)]
    horizontal = [_Lane(False, 0.2 + 0.2 * i, i % 2 == 1) for i in range(4)]
    return vertical + horizontal


def _draw_object(rng: random.Random, lanes: list[_Lane], object_id: int, t: float) -> SceneObject:
    label, class_id = CLASSES[0] if rng.random() < 0.7 else CLASSES[1]
    scale = 1.6 if label == "truck" else 1.0
    lane = rng.choice(
        [ln for ln in lanes if ln.vertical] if rng.random() < 0.7 else [ln for ln in lanes if not ln.vertical]
    )
    w, h = (0.05 * scale, 0.08 * scale) if lane.vertical else (0.08 * scale, 0.05 * scale)
    duration = rng.uniform(2.0, 8.0)
    t0 = t
    previous = lane.last
    if previous is not None and previous.t0 + previous.duration > t:
        # Same lane, still in view: never faster (no overtaking), and two lengths of headway.
        duration = max(duration, previous.duration)
        length = (previous.h + h) if lane.vertical else (previous.w + w)
        t0 = max(t, previous.t0 + 2 * length / (1.2 / previous.duration))
    a, b = (-0.1, 1.1) if lane.forward else (1.1, -0.1)
    drift = rng.uniform(-0.02, 0.02)
    p = lane.position
    start, end = ((p, a), (p + drift, b)) if lane.vertical else ((a, p), (b, p + drift))
    obj = SceneObject(object_id, label, class_id, start, end, t0, duration, w, h)
    lane.last = obj
    return obj


def synth_scene(
    *,
    seed: int,
    fps: float = 15.0,
    seconds: float = 60.0,
    rate: float = 1.0,
    miss: float = 0.08,
    noise: float = 0.04,
    flicker: float = 0.2,
    low: float = 0.1,
    false_positive: float = 0.05,
) -> Scene:
    """A scene with ``rate`` new objects per second; ``noise`` is the box jitter's sigma per box size."""
    rng = random.Random(seed)
    objects: list[SceneObject] = []
    lanes = _lanes()
    t = rng.expovariate(rate)
    while t < seconds:
        obj = _draw_object(rng, lanes, len(objects), t)
        if obj.t0 < seconds:
            objects.append(obj)
        t += rng.expovariate(rate)
    frames: list[SceneFrame] = []
    for index in range(int(seconds * fps)):
        now = index / fps
        truth: dict[int, Box] = {}
        for obj in objects:
            box = obj.box_at(now)
            if box is not None:
                clipped, fraction = _clip(box)
                if fraction >= VISIBLE_FRACTION:
                    truth[obj.object_id] = clipped
        observations = _detect(rng, objects, truth, miss, noise, flicker, low, false_positive)
        frames.append(SceneFrame(index, now, tuple(observations), truth))
    return Scene(fps, tuple(objects), tuple(frames))


def _detect(
    rng: random.Random,
    objects: Sequence[SceneObject],
    truth: dict[int, Box],
    miss: float,
    noise: float,
    flicker: float,
    low: float,
    false_positive: float,
) -> list[Observation]:
    out: list[Observation] = []
    for object_id, box in truth.items():
        occluded = any(
            other != object_id and other_box[3] > box[3] and _overlap(box, other_box) > 0.5
            for other, other_box in truth.items()
        )
        if rng.random() < (0.6 if occluded else miss):
            continue
        score = rng.uniform(0.15, 0.45) if occluded or rng.random() < low else rng.uniform(0.6, 0.95)
        w, h = box[2] - box[0], box[3] - box[1]
        jitter = [rng.gauss(0.0, noise) for _ in range(4)]
        noisy = (
            box[0] + jitter[0] * w,
            box[1] + jitter[1] * h,
            box[2] + jitter[2] * w,
            box[3] + jitter[3] * h,
        )
        clipped, _ = _clip(noisy)
        obj = objects[object_id]
        label, class_id = obj.label, obj.class_id
        if rng.random() < flicker:
            label, class_id = CLASSES[1] if label == "car" else CLASSES[0]
        out.append(Observation(clipped, score, class_id, label))
    if rng.random() < false_positive:
        x, y = rng.uniform(0.0, 0.9), rng.uniform(0.0, 0.9)
        out.append(Observation((x, y, x + 0.05, y + 0.08), rng.uniform(0.3, 0.7), 0, "car"))
    rng.shuffle(out)
    return out


def _overlap(box: Box, other: Box) -> float:
    """Fraction of ``box`` covered by ``other``."""
    ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
    iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
    return ix * iy / max(1e-12, (box[2] - box[0]) * (box[3] - box[1]))


def true_line_counts(
    scene: Scene, line: Line, anchor: Anchor = Anchor.BOTTOM_CENTER
) -> Counter[tuple[str, str]]:
    """Per (label, direction), how many objects' true visible anchors cross the segment."""
    counts: Counter[tuple[str, str]] = Counter()
    previous: dict[int, tuple[float, float, float]] = {}  # object -> (x, y, signed distance)
    for frame in scene.frames:
        ids = list(frame.truth)
        if not ids:
            continue
        points = anchor_points(np.array([frame.truth[i] for i in ids]), anchor)
        dists = line.signed_distances(points)
        for object_id, (x, y), d in zip(ids, points.tolist(), dists.tolist(), strict=True):
            prev = previous.get(object_id)
            if d == 0.0:
                continue
            if prev is not None and (prev[2] > 0) != (d > 0):
                fraction = line.crossing_parameter((prev[0], prev[1]), (x, y))
                if fraction is not None and 0.0 <= fraction <= 1.0:
                    counts[(scene.label_of(object_id), "in" if d > 0 else "out")] += 1
            previous[object_id] = (x, y, d)
    return counts


@dataclass(frozen=True)
class TrackingScore:
    """ID switches (CLEAR MOT: a truth object matched to a different track than last time) and recall."""

    id_switches: int
    recall: float  # matched truth boxes / truth boxes
    false_tracks: int  # confirmed track ids never matched to any truth


def score_tracking(
    scene: Scene, outputs: Sequence[Sequence[tuple[int, Box]]], iou: float = 0.5
) -> TrackingScore:
    """Compare per-frame tracker outputs ``(track id, box)`` with the scene's truth."""
    last: dict[int, int] = {}
    switches = matched = total = 0
    seen: set[int] = set()
    used: set[int] = set()
    for frame, tracks in zip(scene.frames, outputs, strict=True):
        ids = list(frame.truth)
        total += len(ids)
        seen.update(t for t, _ in tracks)
        if not ids or not tracks:
            continue
        sim = iou_matrix(np.array([frame.truth[i] for i in ids]), np.array([b for _, b in tracks]))
        _, rows, _ = lap.lapjv(1.0 - sim, extend_cost=True, cost_limit=1.0 - iou)
        for r, c in enumerate(rows):
            if c < 0 or sim[r, c] < iou:
                continue
            matched += 1
            track_id = tracks[c][0]
            used.add(track_id)
            if ids[r] in last and last[ids[r]] != track_id:
                switches += 1
            last[ids[r]] = track_id
    return TrackingScore(switches, matched / max(1, total), len(seen - used))


@dataclass
class LeptonRun:
    """What :func:`run_lepton` saw: per-frame confirmed tracks, every bucket, every event."""

    outputs: list[list[tuple[int, Box]]]
    buckets: list[ClosedBucket]
    events: list[Event]

    def counts(self) -> Counter[tuple[str, str, str]]:
        """Counted totals per (rule, label, direction) over all buckets."""
        total: Counter[tuple[str, str, str]] = Counter()
        for bucket in self.buckets:
            for row in bucket.counts:
                total[(row.key.rule, row.key.label, row.key.direction.value)] += row.count
        return total


def run_lepton(
    scene: Scene,
    *,
    lines: Sequence[LineRule] = (),
    zones: Sequence[ZoneRule] = (),
    interval: int = 1,
    tracker: TrackerConfig | None = None,
    label_settle_s: float = 2.0,
) -> LeptonRun:
    """Run the analytics on the scene, the detector on every ``interval``-th frame, and close at the end."""
    analytics = Analytics(
        lines=lines,
        zones=zones,
        tracker=tracker,
        wall_now=1_700_000_000.0,
        mono_now=0.0,
        label_settle_s=label_settle_s,
    )
    run = LeptonRun([], [], [])
    for frame in scene.frames:
        obs = frame.observations if frame.index % interval == 0 else None
        result = analytics.step(obs, frame.t, frame.index)
        run.outputs.append(
            [(t.track_id, t.box) for t in result.tracks if t.confirmed and (t.observed or obs is None)]
        )
        run.buckets += result.closed
        run.events += result.events
    run.buckets += analytics.close()
    return run


# --- the libraries compared -----------------------------------------------------------------

PIXELS = np.array([1280.0, 720.0, 1280.0, 720.0])


def _norfair_runner() -> Callable[[Scene], list[list[tuple[int, Box]]]] | None:
    try:
        import norfair
    except ImportError:
        return None

    def run(scene: Scene) -> list[list[tuple[int, Box]]]:
        tracker = norfair.Tracker(
            distance_function="iou",
            distance_threshold=0.8,
            initialization_delay=2,
            hit_counter_max=int(scene.fps),
        )
        outputs: list[list[tuple[int, Box]]] = []
        for frame in scene.frames:
            dets = [
                norfair.Detection(
                    points=(np.array(o.box) * PIXELS).reshape(2, 2),
                    scores=np.array([o.score] * 2),
                    label=o.label,
                )
                for o in frame.observations
                if o.score >= 0.5
            ]
            tracked = tracker.update(dets)
            outputs.append(
                [
                    (int(t.id), tuple((t.estimate.reshape(4) / PIXELS).tolist()))
                    for t in tracked
                    if t.id is not None and t.last_detection is not None
                ]
            )
        return outputs

    return run


def _trackers_runner() -> Callable[[Scene], list[list[tuple[int, Box]]]] | None:
    try:
        import supervision as sv
        from trackers import ByteTrackTracker
    except ImportError:
        return None

    def run(scene: Scene) -> list[list[tuple[int, Box]]]:
        tracker = ByteTrackTracker(frame_rate=scene.fps, lost_track_buffer=int(scene.fps))
        outputs: list[list[tuple[int, Box]]] = []
        for frame in scene.frames:
            n = len(frame.observations)
            xyxy = (np.array([o.box for o in frame.observations]).reshape(n, 4) * PIXELS).astype(np.float32)
            dets = sv.Detections(
                xyxy=xyxy,
                confidence=np.array([o.score for o in frame.observations], dtype=np.float32).reshape(n),
                class_id=np.array([o.class_id for o in frame.observations], dtype=int).reshape(n),
            )
            tracked = tracker.update(dets)
            ids = tracked.tracker_id if tracked.tracker_id is not None else []
            outputs.append(
                [
                    (int(i), tuple((b / PIXELS).tolist()))
                    for i, b in zip(ids, tracked.xyxy, strict=True)
                    if i is not None and i >= 0
                ]
            )
        return outputs

    return run


def _lepton_runner(scene: Scene) -> list[list[tuple[int, Box]]]:
    line = LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])
    zone = ZoneRule.of(
        "box", [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]], loiter_s=30.0, max_occupancy=100
    )
    return run_lepton(scene, lines=[line], zones=[zone]).outputs


def steady_scene(n: int, *, frames: int, seed: int, fps: float = 15.0) -> Scene:
    """``n`` objects that stay in view all along, each wandering in its own grid cell (for cost per frame)."""
    rng = random.Random(seed)
    side = math.ceil(math.sqrt(n))
    cell = 1.0 / side
    size = cell * 0.5
    objects = []
    phases = []
    for i in range(n):
        cx, cy = (i % side + 0.5) * cell, (i // side + 0.5) * cell
        objects.append(SceneObject(i, "car", 0, (cx, cy), (cx, cy), 0.0, frames / fps + 1, size, size))
        phases.append(rng.uniform(0, 2 * math.pi))
    out = []
    for index in range(frames):
        t = index / fps
        truth: dict[int, Box] = {}
        obs = []
        for obj, phase in zip(objects, phases, strict=True):
            dx, dy = 0.2 * cell * math.cos(t + phase), 0.2 * cell * math.sin(t + phase)
            box = (
                obj.start[0] - size / 2 + dx,
                obj.start[1] - size / 2 + dy,
                obj.start[0] + size / 2 + dx,
                obj.start[1] + size / 2 + dy,
            )
            truth[obj.object_id] = box
            j = [rng.gauss(0.0, 0.02 * size) for _ in range(4)]
            obs.append(
                Observation(
                    (box[0] + j[0], box[1] + j[1], box[2] + j[2], box[3] + j[3]),
                    rng.uniform(0.6, 0.95),
                    0,
                    "car",
                )
            )
        out.append(SceneFrame(index, t, tuple(obs), truth))
    return Scene(fps, tuple(objects), tuple(out))


def _cost_ms(run: Callable[[Scene], Any], scene: Scene, repeats: int) -> dict[str, float]:
    """Per frame in milliseconds, median over ``repeats`` runs: process CPU time and wall time.

    CPU time is the figure to compare on a shared machine (others' load stretches wall time);
    numpy is single-threaded for these sizes, so CPU time is this thread's time.
    """
    cpu, wall = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        run(scene)
        cpu.append((time.process_time() - started_cpu) / len(scene.frames) * 1e3)
        wall.append((time.perf_counter() - started) / len(scene.frames) * 1e3)
    return {"cpu": round(statistics.median(cpu), 4), "wall": round(statistics.median(wall), 4)}


def bench_analytics(
    *,
    tracks: Sequence[int] = (10, 50, 200),
    frames: int = 150,
    repeats: int = 3,
    seed: int = 1,
    scene_seconds: float = 120.0,
) -> dict[str, Any]:
    """Cost per frame and tracking accuracy of each contender; contenders not installed are listed as such."""
    contenders: dict[str, Callable[[Scene], list[list[tuple[int, Box]]]] | None] = {
        "lepton": _lepton_runner,
        "norfair": _norfair_runner(),
        "trackers": _trackers_runner(),
    }
    result: dict[str, Any] = {
        "frames": frames,
        "repeats": repeats,
        "cost_ms_per_frame": {},
        "accuracy": {},
        "not_installed": sorted(k for k, v in contenders.items() if v is None),
    }
    scenes = {n: steady_scene(n, frames=frames, seed=seed) for n in tracks}
    for name, run in contenders.items():
        if run is None:
            continue
        result["cost_ms_per_frame"][name] = {str(n): _cost_ms(run, scenes[n], repeats) for n in tracks}
    for fps in (5.0, 15.0):
        scene = synth_scene(seed=seed, fps=fps, seconds=scene_seconds)
        truth_boxes = sum(len(f.truth) for f in scene.frames)
        entry: dict[str, Any] = {"objects": len(scene.objects), "truth_boxes": truth_boxes}
        for name, run in contenders.items():
            if run is None:
                continue
            score = score_tracking(scene, run(scene))
            entry[name] = {
                "id_switches": score.id_switches,
                "recall": round(score.recall, 4),
                "false_tracks": score.false_tracks,
            }
        line = LineRule.of("mid", [[0.0, 0.5], [1.0, 0.5]])
        counted = Counter({(k[1], k[2]): n for k, n in run_lepton(scene, lines=[line]).counts().items()})
        truth = true_line_counts(scene, line.line)
        entry["lepton_line_counts"] = {
            f"{k[0]}/{k[1]}": {"truth": truth[k], "counted": counted[k]}
            for k in sorted(set(truth) | set(counted))
        }
        result["accuracy"][f"{fps:g}fps"] = entry
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.bench.analytics", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tracks", type=int, nargs="+", default=[10, 50, 200])
    args = parser.parse_args(argv)
    result = bench_analytics(tracks=args.tracks, frames=args.frames, repeats=args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, costs in result["cost_ms_per_frame"].items():
            print(name, " ".join(f"{n} tracks: {ms['cpu']:.3f} ms" for n, ms in costs.items()))
        for fps, entry in result["accuracy"].items():
            print(fps, {k: v for k, v in entry.items() if k != "lepton_line_counts"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
