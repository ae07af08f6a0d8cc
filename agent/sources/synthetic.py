"""A generated traffic scene: a road seen from above with cars and trucks driving across.

It is both the ``synthetic://WxH@FPS`` source (no camera needed) and the data the
project's default model is trained on, so every frame comes with its ground truth.
"""

from __future__ import annotations

import os
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


CLIP_CODECS = {".avi": "MJPG", ".mp4": "mp4v"}


def write_clip(path: str, width: int, height: int, fps: float, frames: int, seed: int = 0) -> int:
    """Write a synthetic clip (MJPG in .avi, or mp4v in .mp4); returns frames written.
    Raises AgentError naming the path for an unknown extension or a place it cannot write."""
    out = Path(path)
    if "\x00" in path:
        raise AgentError(f"cannot write {path!r}: the name holds a NUL byte", fix="rename it")
    codec = CLIP_CODECS.get(out.suffix.lower())
    if codec is None:
        raise AgentError(f"cannot write {path}: unknown video extension {out.suffix or '(none)'!r}",
                         fix=f"name it {out.stem or 'clip'}.avi or .mp4 (supported: "
                             f"{', '.join(CLIP_CODECS)})")
    if not out.parent.is_dir():
        raise AgentError(f"cannot write {path}: directory {out.parent} does not exist",
                         fix=f"create it first (mkdir -p {out.parent})")
    if out.is_dir() or not os.access(out.parent, os.W_OK):
        raise AgentError(f"cannot write {path}: "
                         + ("it is a directory" if out.is_dir() else f"{out.parent} is not writable"),
                         fix="choose another output file")
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise AgentError(f"cannot write video {path}: OpenCV could not open a {codec} writer",
                         fix="check free disk space, or try the other extension (.avi or .mp4)")
    scene = SyntheticScene(width, height, fps, seed=seed)
    try:
        for _ in range(frames):
            frame, _truth = scene.step()
            writer.write(frame)
    finally:
        writer.release()
    return frames
