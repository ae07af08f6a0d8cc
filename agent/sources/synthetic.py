"""Generated traffic scenes: roads seen from above with cars and trucks driving across.

``SyntheticScene`` (the *road* scene) is both the ``synthetic://WxH@FPS`` source (no camera
needed) and the data the project's default model is trained on, so every frame comes with its
ground truth. It is left as it was: the model, its golden frame and the demo depend on it.

``JunctionScene`` is the scene for counting and tracking evaluation: a horizontal road and a
vertical one crossing, vehicles of both classes in both directions on each, entering and
leaving at every edge of the frame, at speeds from 2 to 9 s to cross, overtaking within a lane
(the faster one drawn over the slower) and passing over each other where the roads cross (the
vertical road's vehicles are drawn last). Every vehicle is drawn as a solid rectangle of whole
pixels, so its ground truth is exact: see :class:`TruthBox`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.errors import AgentError

CLASSES = ("car", "truck")


@dataclass
class Vehicle:
    class_id: int
    lane: int
    x: float
    speed: float
    length: float
    color: tuple[int, int, int]


@dataclass(frozen=True)
class GroundTruth:
    """One vehicle in a frame: class and normalized (ymin, xmin, ymax, xmax)."""

    class_id: int
    box: tuple[float, float, float, float]


class SyntheticScene:
    """Deterministic for a given seed; ``step()`` advances one frame."""

    def __init__(self, width: int, height: int, fps: float = 15.0, seed: int = 0,
                 lanes: int = 4, density: float = 0.5) -> None:
        self.width = width
        self.height = height
        self.fps = fps
        self.rng = np.random.default_rng(seed)
        self.lanes = lanes
        self.density = density
        self.road_top = int(height * self.rng.uniform(0.12, 0.25))
        self.road_bottom = int(height * self.rng.uniform(0.75, 0.88))
        self.lane_height = (self.road_bottom - self.road_top) / lanes
        self.vehicles: list[Vehicle] = []
        self.background = self._draw_background()
        for _ in range(int(lanes * density * 2)):
            self._spawn(anywhere=True)

    def _draw_background(self) -> np.ndarray:  # BGR, uint8
        h, w = self.height, self.width
        grass = np.array(self.rng.integers(40, 110, 3), dtype=np.uint8)
        img = np.empty((h, w, 3), np.uint8)
        img[:] = grass
        asphalt = int(self.rng.integers(70, 120))
        img[self.road_top:self.road_bottom] = asphalt
        noise = self.rng.integers(-12, 12, (h, w, 1), dtype=np.int16)
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        dash = max(8, w // 24)
        thickness = max(1, h // 160)
        for lane in range(1, self.lanes):
            y = int(self.road_top + lane * self.lane_height)
            for x0 in range(0, w, dash * 2):
                cv2.line(img, (x0, y), (x0 + dash, y), (220, 220, 220), thickness)
        return np.asarray(img, dtype=np.uint8)

    def _spawn(self, anywhere: bool = False) -> None:
        lane = int(self.rng.integers(0, self.lanes))
        direction = 1 if lane < self.lanes / 2 else -1
        class_id = 0 if self.rng.random() < 0.7 else 1
        base = self.width * (0.07 if class_id == 0 else 0.16)
        length = base * float(self.rng.uniform(0.85, 1.2))
        speed = direction * self.width * float(self.rng.uniform(0.08, 0.2)) / max(self.fps, 1.0)
        if anywhere:
            x = float(self.rng.uniform(0, self.width))
        else:
            x = -length if direction > 0 else float(self.width)
        lane_vehicles = [v for v in self.vehicles if v.lane == lane]
        if any(abs(v.x - x) < max(v.length, length) * 1.3 for v in lane_vehicles):
            return
        color = tuple(int(c) for c in self.rng.integers(30, 255, 3))
        self.vehicles.append(Vehicle(class_id, lane, x, speed, length, color))  # type: ignore[arg-type]

    def step(self) -> tuple[np.ndarray, list[GroundTruth]]:
        """Render the next frame (BGR, uint8) and its ground truth."""
        frame = self.background.copy()
        truths: list[GroundTruth] = []
        keep: list[Vehicle] = []
        for v in self.vehicles:
            v.x += v.speed
            if -v.length * 1.5 < v.x < self.width + v.length * 0.5:
                keep.append(v)
        self.vehicles = keep
        if self.rng.random() < self.density * 0.25:
            self._spawn()
        for v in self.vehicles:
            lane_top = self.road_top + v.lane * self.lane_height
            thickness = self.lane_height * (0.55 if v.class_id == 0 else 0.75)
            y0 = lane_top + (self.lane_height - thickness) / 2
            x0, x1 = v.x, v.x + v.length
            p0 = (round(x0), round(y0))
            p1 = (round(x1), round(y0 + thickness))
            cv2.rectangle(frame, p0, p1, v.color, -1)
            shade = tuple(max(0, c - 70) for c in v.color)
            if v.class_id == 0:
                wx0 = x0 + v.length * (0.25 if v.speed > 0 else 0.15)
                cv2.rectangle(frame, (int(wx0), int(y0 + thickness * 0.15)),
                              (int(wx0 + v.length * 0.55), int(y0 + thickness * 0.85)), shade, -1)
            else:
                cab = x1 - v.length * 0.22 if v.speed > 0 else x0
                cv2.rectangle(frame, (int(cab), int(y0)), (int(cab + v.length * 0.22),
                              int(y0 + thickness)), shade, -1)
                cv2.line(frame, (int(cab), int(y0)), (int(cab), int(y0 + thickness)), (20, 20, 20),
                         max(1, self.width // 320))
            ymin = max(0.0, y0 / self.height)
            ymax = min(1.0, (y0 + thickness) / self.height)
            xmin = max(0.0, x0 / self.width)
            xmax = min(1.0, x1 / self.width)
            if xmax - xmin > 0.02:
                truths.append(GroundTruth(v.class_id, (ymin, xmin, ymax, xmax)))
        return frame, truths


@dataclass(frozen=True)
class TruthBox:
    """One object in one frame, as MOT Challenge ground truth has it.

    ``x, y, w, h`` are whole pixels, 0-based: the box covers columns ``x .. x + w - 1`` and rows
    ``y .. y + h - 1``, exactly the pixels where the object is drawn, clipped to the frame (as
    MOT's boxes are). In normalized coordinates (the model's) that is ``x / W .. (x + w) / W``.
    The box is amodal: where another vehicle is drawn over this one, the box still covers the
    hidden part, and ``visibility`` says how much shows: the object's own pixels seen in the
    frame over its whole unclipped area (1.0 fully in view and unoccluded; an object cut by the
    frame edge or driving under another has less). An object with no pixel inside the frame is
    not in the truth; one fully hidden under another (visibility 0) is.
    """

    frame: int  # 1-based
    object_id: int  # 1-based, unique over the clip
    x: int
    y: int
    w: int
    h: int
    class_id: int
    visibility: float

    def mot_row(self) -> str:
        """``frame,id,x,y,w,h,1,class,visibility``: MOT Challenge ground truth (the 1 = consider)."""
        return (f"{self.frame},{self.object_id},{self.x},{self.y},{self.w},{self.h},1,"
                f"{self.class_id},{self.visibility:.4f}".rstrip("0").rstrip("."))


@dataclass
class _Mover:
    object_id: int
    class_id: int
    vertical: bool
    direction: int  # +1: right (horizontal) or down (vertical); -1 the other way
    pos: float  # pixel coordinate along the road of the box's low edge (left or top)
    across: int  # pixel coordinate across the road of the box's low edge (top or left)
    length: int
    thickness: int
    speed: float  # pixels per second, >= 0
    sprite: np.ndarray  # (rows, cols, 3) BGR, exactly the box's size

    def box(self) -> tuple[int, int, int, int]:
        """Unclipped ``(x0, y0, x1, y1)``, end exclusive."""
        along = math.floor(self.pos)
        if self.vertical:
            return self.across, along, self.across + self.thickness, along + self.length
        return along, self.across, along + self.length, self.across + self.thickness


class JunctionScene:
    """Two roads crossing, seen from above; ``step()`` advances one frame and returns its exact
    truth. Deterministic for a given seed; ``density`` scales how many vehicles enter (0.5 is
    about 2 vehicles a second over the six lanes)."""

    H_LANES = 4  # lanes 0-1 drive right, 2-3 left
    V_LANES = 2  # lane 0 drives down, 1 up

    def __init__(self, width: int, height: int, fps: float = 15.0, seed: int = 0,
                 density: float = 0.5) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.density = density
        self.rng = np.random.default_rng(seed)
        self.frame_index = 0
        self._next_id = 1
        self.road_top = int(height * self.rng.uniform(0.2, 0.3))
        self.road_bottom = int(height * self.rng.uniform(0.7, 0.8))
        self.lane_height = (self.road_bottom - self.road_top) / self.H_LANES
        centre = width * self.rng.uniform(0.35, 0.65)
        half = self.lane_height * self.V_LANES / 2
        self.road_left, self.road_right = int(centre - half), int(centre + half)
        self.lane_width = (self.road_right - self.road_left) / self.V_LANES
        self.vehicles: list[_Mover] = []
        self.background = self._draw_background()
        # Every class in every direction on both roads from the first frame, then arrivals.
        for vertical, lanes in ((False, self.H_LANES), (True, self.V_LANES)):
            for lane in range(lanes):
                for class_id in (0, 1):
                    self._spawn(vertical, lane, class_id, anywhere=True)

    def _draw_background(self) -> np.ndarray:
        h, w = self.height, self.width
        img = np.empty((h, w, 3), np.int16)
        img[:] = self.rng.integers(40, 110, 3)
        asphalt = int(self.rng.integers(70, 120))
        img[:, self.road_left:self.road_right] = asphalt
        img[self.road_top:self.road_bottom] = asphalt
        img += self.rng.integers(-12, 12, (h, w, 1), dtype=np.int16)
        out = np.clip(img, 0, 255).astype(np.uint8)
        dash, thick = max(8, w // 24), max(1, h // 160)
        for lane in range(1, self.H_LANES):
            y = int(self.road_top + lane * self.lane_height)
            for x0 in range(0, w, dash * 2):
                out[y:y + thick, x0:x0 + dash] = 220
        for lane in range(1, self.V_LANES):
            x = int(self.road_left + lane * self.lane_width)
            for y0 in range(0, h, dash * 2):
                if not self.road_top <= y0 < self.road_bottom:
                    out[y0:y0 + dash, x:x + thick] = 220
        return out

    def _sprite(self, class_id: int, length: int, thickness: int, direction: int,
                vertical: bool) -> np.ndarray:
        """The vehicle drawn facing right (+x), then turned to its way; every pixel of the
        array is the vehicle's (the box is exact)."""
        color = self.rng.integers(30, 255, 3)
        shade = np.maximum(color - 70, 0)
        img = np.empty((thickness, length, 3), np.uint8)
        img[:] = color
        if class_id == 0:  # windscreen to roof, nearer the front
            a, b = int(length * 0.2), int(length * 0.75)
            img[int(thickness * 0.15):max(int(thickness * 0.85), int(thickness * 0.15) + 1),
                a:b] = shade
        else:  # cab at the front, a dark gap between cab and box
            cab = max(2, int(length * 0.22))
            img[:, length - cab:] = shade
            img[:, length - cab - max(1, self.width // 320):length - cab] = 20
        if direction < 0:
            img = img[:, ::-1]
        if vertical:
            img = img.transpose(1, 0, 2)  # facing down
        return np.ascontiguousarray(img)

    def _spawn(self, vertical: bool, lane: int, class_id: int, anywhere: bool = False) -> None:
        if vertical:
            direction = 1 if lane == 0 else -1
            span = self.height
            lane_size = self.lane_width
            low = self.road_left + lane * lane_size
        else:
            direction = 1 if lane < self.H_LANES // 2 else -1
            span = self.width
            lane_size = self.lane_height
            low = self.road_top + lane * lane_size
        length = max(4, round(self.width * (0.07 if class_id == 0 else 0.16)
                              * float(self.rng.uniform(0.85, 1.2))))
        thickness = max(2, round(lane_size * (0.55 if class_id == 0 else 0.75)))
        across = round(low + (lane_size - thickness) / 2)
        crossing_s = float(self.rng.uniform(2.0, 6.0) if class_id == 0 else self.rng.uniform(4.0, 9.0))
        speed = (span + length) / crossing_s
        if anywhere:
            pos = float(self.rng.uniform(-length * 0.5, span - length * 0.5))
        else:
            pos = float(-length) if direction > 0 else float(span)
        same_lane = [v for v in self.vehicles if v.vertical == vertical and v.across == across]
        if any(abs(v.pos - pos) < max(v.length, length) * 1.2 for v in same_lane):
            return  # the entry is taken: no vehicle appears inside another
        sprite = self._sprite(class_id, length, thickness, direction, vertical)
        self.vehicles.append(_Mover(self._next_id, class_id, vertical, direction, pos, across,
                                    length, thickness, speed, sprite))
        self._next_id += 1

    def _gone(self, v: _Mover) -> bool:
        """Past the far edge of the frame (a vehicle not yet in view is still coming)."""
        span = self.height if v.vertical else self.width
        return v.pos >= span if v.direction > 0 else v.pos + v.length <= 0

    def step(self) -> tuple[np.ndarray, list[TruthBox]]:
        """Render the next frame (BGR, uint8) and its exact truth, in drawing order."""
        self.frame_index += 1
        if self.frame_index > 1:
            for v in self.vehicles:
                v.pos += v.direction * v.speed / self.fps
        self.vehicles = [v for v in self.vehicles if not self._gone(v)]
        # Arrivals: each lane a Poisson stream, each class in each direction.
        rate = self.density * 0.6 / max(self.fps, 1e-6)  # per lane per frame
        for vertical, lanes in ((False, self.H_LANES), (True, self.V_LANES)):
            for lane in range(lanes):
                if self.rng.random() < rate:
                    self._spawn(vertical, lane, 0 if self.rng.random() < 0.7 else 1)
        # Painter's order: horizontal road, slower under faster (overtaking), then the vertical
        # road's vehicles over everything (they pass over the horizontal road).
        order = sorted(self.vehicles, key=lambda v: (v.vertical, v.speed, v.object_id))
        frame = self.background.copy()
        owner = np.zeros((self.height, self.width), np.int32)
        drawn: list[tuple[_Mover, tuple[int, int, int, int]]] = []
        for v in order:
            x0, y0, x1, y1 = v.box()
            cx0, cy0 = max(x0, 0), max(y0, 0)
            cx1, cy1 = min(x1, self.width), min(y1, self.height)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            frame[cy0:cy1, cx0:cx1] = v.sprite[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
            owner[cy0:cy1, cx0:cx1] = v.object_id
            drawn.append((v, (cx0, cy0, cx1, cy1)))
        truths: list[TruthBox] = []
        for v, (cx0, cy0, cx1, cy1) in drawn:
            seen = int(np.count_nonzero(owner[cy0:cy1, cx0:cx1] == v.object_id))
            truths.append(TruthBox(self.frame_index, v.object_id, cx0, cy0, cx1 - cx0, cy1 - cy0,
                                   v.class_id, seen / (v.length * v.thickness)))
        return frame, truths


def write_truth(path: str, rows: Iterable[TruthBox]) -> int:
    """Write MOT Challenge ground truth, one row a line; returns the rows written.
    Raises AgentError naming the path where it cannot be written."""
    try:
        with open(path, "w", encoding="ascii") as f:
            n = 0
            for row in rows:
                f.write(row.mot_row() + "\n")
                n += 1
    except OSError as exc:
        raise AgentError(f"cannot write ground truth {path}: {exc.strerror or exc}",
                         fix="choose a writable file in an existing directory") from exc
    return n


SCENES = ("road", "junction")


CLIP_CODECS = {".avi": "MJPG", ".mp4": "mp4v"}


def write_clip(path: str, width: int, height: int, fps: float, frames: int, seed: int = 0, *,
               scene: str = "road", density: float = 0.5, truth: str | None = None) -> int:
    """Write a synthetic clip (MJPG in .avi, or mp4v in .mp4); returns frames written.

    ``scene`` is ``road`` (the model's training scene, as ``synthetic://``) or ``junction`` (the
    counting scene, see :class:`JunctionScene`); ``truth`` names a file to write the junction
    scene's exact MOT ground truth to. Raises AgentError naming the path for an unknown
    extension or a place it cannot write."""
    out = Path(path)
    if "\x00" in path:
        raise AgentError(f"cannot write {path!r}: the name holds a NUL byte", fix="rename it")
    if scene not in SCENES:
        raise AgentError(f"unknown scene {scene!r}", fix=f"use one of {', '.join(SCENES)}")
    if truth is not None and scene != "junction":
        raise AgentError(f"the {scene} scene has no exact ground truth to write to {truth}",
                         fix="use the junction scene for --truth")
    codec = CLIP_CODECS.get(out.suffix.lower())
    if codec is None:
        raise AgentError(f"cannot write {path}: unknown video extension {out.suffix or '(none)'!r}",
                         fix=f"name it {out.stem or 'clip'}.avi or .mp4 (supported: "
                             f"{', '.join(CLIP_CODECS)})")
    for target in (out, *([Path(truth)] if truth is not None else [])):
        if not target.parent.is_dir():
            raise AgentError(f"cannot write {target}: directory {target.parent} does not exist",
                             fix=f"create it first (mkdir -p {target.parent})")
        if target.is_dir() or not os.access(target.parent, os.W_OK):
            raise AgentError(f"cannot write {target}: "
                             + ("it is a directory" if target.is_dir()
                                else f"{target.parent} is not writable"),
                             fix="choose another output file")
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise AgentError(f"cannot write video {path}: OpenCV could not open a {codec} writer",
                         fix="check free disk space, or try the other extension (.avi or .mp4)")
    rows: list[TruthBox] = []
    try:
        if scene == "junction":
            junction = JunctionScene(width, height, fps, seed=seed, density=density)
            for _ in range(frames):
                frame, boxes = junction.step()
                writer.write(frame)
                rows.extend(boxes)
        else:
            road = SyntheticScene(width, height, fps, seed=seed, density=density)
            for _ in range(frames):
                frame, _truth = road.step()
                writer.write(frame)
    finally:
        writer.release()
    if truth is not None:
        write_truth(truth, rows)
    return frames
