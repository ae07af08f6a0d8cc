"""The live view's latest-frame slot and its renderer.

A pipeline's inference thread calls :meth:`LatestFrame.observe` once per detector frame (the
hook in ``InferenceWorker``). While nobody watches, that is one clock read and a comparison;
while a viewer watches (``want()`` called in the last :data:`WANT_S`), at most every
``min_interval_s`` (0.5 / live_fps: twice the rate drawn) it stores a reference to the frame's
BGR image (the capture thread made a new one per read, nothing copies it) and the boxes and
track boxes as small tuples; the other frames cost a clock read (measured: 24 us a frame with
10 boxes and 10 tracks when every frame was taken, 0.4 us now). Drawing and JPEG encoding
happen on the web side, off the pipeline's threads, at most ``live_fps`` times a second
whatever the number of viewers (:class:`Renderer` caches the JPEG of the last frame it drew).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from agent.core.contract.result import Detection
from agent.pipeline.frames import CapturedFrame

WANT_S = 3.0  # a viewer keeps the slot filled this long after its last request
SAMPLE_S = 0.1  # the slot takes a frame at most this often (twice the live view's 5 fps)
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 normalized


@dataclass(frozen=True)
class LiveBox:
    box: Box
    label: str
    score: float


@dataclass(frozen=True)
class LiveTrack:
    track_id: int
    box: Box
    label: str
    confirmed: bool


@dataclass(frozen=True)
class LiveFrame:
    """One frame as the inference thread left it."""

    seq: int
    index: int
    width: int
    height: int
    image: np.ndarray
    boxes: tuple[LiveBox, ...]
    tracks: tuple[LiveTrack, ...]
    at: float  # time.monotonic()


def _tracks_of(analytics: Any) -> tuple[LiveTrack, ...]:
    # AnalyticsStage.tracks: the last frame's tracks, replaced whole after each frame.
    if analytics is None:
        return ()
    return tuple(LiveTrack(t.track_id, tuple(float(v) for v in t.box),  # type: ignore[arg-type]
                           t.label or "", bool(t.confirmed)) for t in analytics.tracks)


class LatestFrame:
    """The newest frame of one pipeline with its boxes and tracks, for the web console."""

    def __init__(self, analytics: Any = None, min_interval_s: float = SAMPLE_S) -> None:
        self.analytics = analytics
        # The slot takes a frame at most this often (the console sets 0.5 / live_fps): the
        # renderer draws at most live_fps a second, so converting the boxes of every frame
        # the pipeline processes (hundreds a second when it runs as fast as it can) is waste.
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._frame: LiveFrame | None = None
        self._seq = 0
        self._wanted_until = 0.0
        self._taken_at = -math.inf

    def want(self) -> None:
        """A viewer is there: fill the slot for the next WANT_S seconds."""
        self._wanted_until = time.monotonic() + WANT_S

    @property
    def wanted(self) -> bool:
        return time.monotonic() < self._wanted_until

    def observe(self, frame: CapturedFrame, detections: Sequence[Detection]) -> None:
        """Inference thread: the frame just processed (after its analytics ran)."""
        now = time.monotonic()
        if frame.image is None or now >= self._wanted_until \
                or now - self._taken_at < self.min_interval_s:
            return
        self._taken_at = now
        boxes = tuple(LiveBox((d.box[1], d.box[0], d.box[3], d.box[2]), d.label, d.score)
                      for d in detections)
        tracks = _tracks_of(self.analytics)
        with self._lock:
            self._seq += 1
            self._frame = LiveFrame(self._seq, frame.index, frame.width, frame.height,
                                    frame.image, boxes, tracks, now)

    def get(self) -> LiveFrame | None:
        with self._lock:
            return self._frame


@dataclass(frozen=True)
class Overlay:
    """What is drawn besides the boxes: the pipeline's lines and zones (normalized points)."""

    lines: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()
    zones: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = ()


_GREEN = (80, 200, 80)
_MAGENTA = (255, 0, 255)  # detector boxes of a pipeline without tracking
_LINE = (0, 200, 255)
_ZONE = (255, 160, 0)


def _px(p: tuple[float, float], w: int, h: int) -> tuple[int, int]:
    return round(p[0] * w), round(p[1] * h)


def draw(frame: LiveFrame, overlay: Overlay) -> np.ndarray:
    """A copy of the frame's image with tracks (id and class), untracked boxes, lines (with an
    arrow towards their 'in' side) and zones drawn."""
    img: np.ndarray = frame.image.copy()
    h, w = img.shape[:2]
    for name, pts in overlay.zones:
        poly = np.array([_px(p, w, h) for p in pts], np.int32)
        cv2.polylines(img, [poly], True, _ZONE, 2)
        cv2.putText(img, name, (int(poly[0][0]) + 4, int(poly[0][1]) + 14),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, _ZONE, 1)
    for name, pts in overlay.lines:
        a, b = _px(pts[0], w, h), _px(pts[1], w, h)
        cv2.line(img, a, b, _LINE, 2)
        mid = ((a[0] + b[0]) // 2, (a[1] + b[1]) // 2)
        dx, dy = b[0] - a[0], b[1] - a[1]
        norm = max((dx * dx + dy * dy) ** 0.5, 1.0)
        # 'in' is the side where (P2 - P1) x (A - P1) > 0 (lepton.count): normal (-dy, dx)
        tip = (int(mid[0] - dy / norm * 30), int(mid[1] + dx / norm * 30))
        cv2.arrowedLine(img, mid, tip, _LINE, 2, tipLength=0.3)
        cv2.putText(img, name, (a[0] + 4, a[1] + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _LINE, 1)
    tracked = False
    for t in frame.tracks:
        if not t.confirmed:
            continue
        tracked = True
        x1, y1 = _px((t.box[0], t.box[1]), w, h)
        x2, y2 = _px((t.box[2], t.box[3]), w, h)
        cv2.rectangle(img, (x1, y1), (x2, y2), _GREEN, 2)
        cv2.putText(img, f"#{t.track_id} {t.label}", (x1, max(12, y1 - 4)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, _GREEN, 1)
    if not tracked:  # a pipeline without analytics: the detector's boxes
        for d in frame.boxes:
            x1, y1 = _px((d.box[0], d.box[1]), w, h)
            x2, y2 = _px((d.box[2], d.box[3]), w, h)
            cv2.rectangle(img, (x1, y1), (x2, y2), _MAGENTA, 2)
            cv2.putText(img, f"{d.label} {d.score:.2f}", (x1, max(12, y1 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.45, _MAGENTA, 1)
    return img


def encode_jpeg(image: np.ndarray, quality: int = 75) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - a BGR uint8 image always encodes
        raise ValueError("JPEG encoding failed")
    return bytes(jpeg.tobytes())


class Renderer:
    """One pipeline's drawn and raw JPEGs, shared by every viewer: a new one is made only for
    a new frame and at most once per ``min_interval_s`` (so N viewers at 5 fps cost 5 encodes
    a second, not 5N). Thread-safe: the web handlers call it through ``asyncio.to_thread``."""

    def __init__(self, slot: LatestFrame, min_interval_s: float = 0.0) -> None:
        self.slot = slot
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._cache: dict[tuple[bool, Overlay], tuple[float, int, bytes]] = {}

    def jpeg(self, overlay: Overlay | None) -> tuple[int, bytes] | None:
        """(frame seq, JPEG) of the newest frame, drawn with ``overlay`` (None: the raw
        frame, for the editor's background); None while no frame came."""
        key = (overlay is not None, overlay or Overlay())
        with self._lock:
            now = time.monotonic()
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.min_interval_s:
                return cached[1], cached[2]
            frame = self.slot.get()
            if frame is None:
                return None
            if cached is not None and cached[1] == frame.seq:
                return cached[1], cached[2]
            image = draw(frame, overlay) if overlay is not None else frame.image
            made = (now, frame.seq, encode_jpeg(image))
            if len(self._cache) > 8:  # overlays change with the rules: keep the recent ones
                self._cache.clear()
            self._cache[key] = made
        return made[1], made[2]
