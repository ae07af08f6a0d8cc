"""The capture thread: read, pace, prepare and queue frames; reconnect lost live sources."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent import kernels
from agent.core.analytics.engine import detector_interval
from agent.core.backoff import Backoff
from agent.core.thermal import ThermalGovernor
from agent.core.uri import SourceUri
from agent.errors import SourceError
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue
from agent.sources.readers import FrameReader, open_reader

log = logging.getLogger("agent.capture")


class MotionGate:
    """Decides per frame whether inference is worth running (see ``[motion]`` in the config)."""

    def __init__(self, min_score: float, every_n: int, grid_width: int, pixel_threshold: int,
                 learning_rate: float) -> None:
        self.min_score = min_score
        self.every_n = every_n
        self.grid_width = grid_width
        self.pixel_threshold = pixel_threshold
        self.alpha_q8 = max(1, min(256, round(learning_rate * 256)))
        self.detector: Any = None
        self.spec: kernels.Preprocess | None = None
        self.since_run = 0
        self.every_n_factor = 1
        self.last_score = 0.0
        self.skipped = 0

    def should_run(self, image: np.ndarray) -> bool:
        h, w = image.shape[:2]
        if self.spec is None or self.detector is None:
            gw = min(self.grid_width, w)
            gh = max(1, round(h * gw / w))
            self.spec = kernels.Preprocess(out_w=gw, out_h=gh, out_c=1, resize="area")
            self.detector = kernels.active.Motion(kernels.MotionState(
                gw, gh, alpha_q8=self.alpha_q8, threshold=self.pixel_threshold))
        gray, _ = kernels.active.preprocess(kernels.Image.packed("bgr", image), self.spec)
        self.last_score, _boxes = self.detector.update(gray[..., 0], 0)
        self.since_run += 1
        if self.last_score >= self.min_score or self.since_run >= self.every_n * self.every_n_factor:
            self.since_run = 0
            return True
        self.skipped += 1
        return False

    def reset(self) -> None:
        """A new scene (reopened source): drop the background and run on the next frame."""
        self.detector = None
        self.spec = None
        self.since_run = self.every_n


@dataclass
class CaptureStats:
    frames: int = 0
    opens: int = 0
    reconnects: int = 0
    last_error: str | None = None
    ended: bool = False
    fatal: SourceError | None = None


class CaptureWorker:
    """Runs a source in the ``capture`` thread until it ends, ``max_frames`` or stop().

    A live source that fails to read is reopened after a capped, jittered backoff. A slow
    source is never treated as dead: only a failed read counts, however long it took. The
    watchdog, though, reads ``busy_since``: an open or read that never returns is a hang.
    """

    def __init__(self, uri: SourceUri, out: BoundedQueue[CapturedFrame],
                 prepare: Callable[[np.ndarray], np.ndarray], *, realtime: bool,
                 loop_file: bool = False, max_frames: int = 0, backoff: Backoff | None = None,
                 reader_factory: Callable[[SourceUri], FrameReader] = open_reader,
                 keep_image: bool = False, motion: MotionGate | None = None,
                 governor: ThermalGovernor | None = None, name: str = "capture",
                 interval: int = 1, min_detector_hz: float = 0.0, resume_after: int = -1,
                 replay_frames: int = 0) -> None:
        self.uri = uri
        self.out = out
        self.prepare = prepare
        self.realtime = realtime
        self.loop_file = loop_file
        self.max_frames = max_frames
        self.backoff = backoff or Backoff(0.5, 30.0)
        self.reader_factory = reader_factory
        self.keep_image = keep_image
        self.motion = motion
        self.governor = governor
        self.thermal_skipped = 0
        self.configured_interval = max(1, interval)
        self.min_detector_hz = min_detector_hz
        self.interval = self.configured_interval  # set again at each open from the source's fps
        self._lowered_to = 0
        self.name = name
        # A file source continues after the last frame whose results were committed: frames up
        # to this index are read and passed over, once, on the first open.
        self.resume_after = resume_after if not uri.is_live else -1
        # ... and the last ``replay_frames`` of those are processed again, flagged replay, to
        # rebuild the tracker's state before counting resumes.
        self.replay_from = self.resume_after - replay_frames + 1 if self.resume_after >= 0 else 0
        self.resumed = 0
        self.stats = CaptureStats()
        self._stop = threading.Event()
        self._next_due = 0.0
        # Progress heartbeat for the watchdog (monotonic seconds, written by this thread only):
        # when the source call now in progress (an open or a read) began, None between calls.
        self.busy_since: float | None = None
        self.busy_with = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def blocked_for(self, now: float) -> float:
        """Seconds the thread has been inside one open or read of the source (0 between)."""
        since = self.busy_since
        return max(0.0, now - since) if since is not None else 0.0

    def _open(self) -> FrameReader | None:
        while not self._stop.is_set():
            try:
                self.busy_with, self.busy_since = "open", time.monotonic()
                try:
                    reader = self.reader_factory(self.uri)
                finally:
                    self.busy_since = None
                self.stats.opens += 1
                self.backoff.reset()
                self._set_interval(reader.fps)
                return reader
            except SourceError as exc:
                self.stats.last_error = str(exc)
                if not self.uri.is_live:
                    self.stats.fatal = exc
                    return None
                delay = self.backoff.next_delay()
                log.warning("%s; retrying in %.1fs", exc, delay)
                self._stop.wait(delay)
        return None

    def _set_interval(self, fps: float) -> None:
        interval = detector_interval(self.configured_interval, fps, self.min_detector_hz)
        if interval < self.configured_interval and interval != self._lowered_to:
            log.warning("%s: the source runs at %g fps, so interval %d would run the detector at "
                        "%.1f Hz, under analytics.min_detector_hz (%g): running it every %d "
                        "frame(s); the tracker loses vehicles between detections that far apart "
                        "(docs/analytics.md)", self.name, fps, self.configured_interval,
                        fps / self.configured_interval, self.min_detector_hz, interval)
            self._lowered_to = interval  # once per value, not at every loop of a file
        self.interval = interval

    def _run(self) -> None:
        try:
            self._capture_loop()
        except Exception as exc:
            log.exception("capture thread failed")
            self.stats.fatal = SourceError(f"capture failed: {exc!r}", uri=self.uri.raw)
        finally:
            self.stats.ended = True
            self.out.close()

    def _pace(self, period: float) -> None:
        """Sleep until the next frame is due (real-time playback); never sleeps when behind."""
        if not period:
            return
        self._next_due += period
        delay = self._next_due - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)
        else:
            self._next_due = time.monotonic()

    def _capture_loop(self) -> None:
        discontinuity = True
        reader = self._open()
        if reader is None:
            return
        period = 1.0 / reader.fps if self.realtime and reader.fps > 0 else 0.0
        self._next_due = time.monotonic()
        try:
            while not self._stop.is_set():
                if self.max_frames and self.stats.frames >= self.max_frames:
                    return
                started = time.perf_counter()
                self.busy_with, self.busy_since = "read", time.monotonic()
                try:
                    image = reader.read()
                finally:
                    self.busy_since = None
                if image is None:
                    reader.close()
                    if not self.uri.is_live:
                        if not self.loop_file:
                            return
                        log.info("end of %s; looping", self.uri.raw)
                        reader = self._open()
                    else:
                        self.stats.reconnects += 1
                        self.stats.last_error = f"source {self.uri.raw}: lost (read failed)"
                        delay = self.backoff.next_delay()
                        log.warning("%s; reconnecting in %.1fs", self.stats.last_error, delay)
                        if self._stop.wait(delay):
                            return
                        reader = self._open()
                    if reader is None:
                        return
                    discontinuity = True
                    self._next_due = time.monotonic()
                    continue
                wall, mono_ns = time.time(), time.monotonic_ns()
                read_done = time.perf_counter()
                if self.stats.frames < self.replay_from:
                    self.stats.frames += 1
                    self.resumed += 1
                    continue
                replay = self.stats.frames <= self.resume_after
                media_s = (self.stats.frames / reader.fps if not self.uri.is_live and reader.fps > 0
                           else mono_ns / 1e9)
                if self.motion is not None:
                    if discontinuity:
                        self.motion.reset()
                    if self.governor is not None:
                        self.motion.every_n_factor = self.governor.static_every_n_factor(True)
                    if not self.motion.should_run(image):
                        self.stats.frames += 1
                        self._pace(period)
                        continue
                if self.governor is not None and self.governor.level:
                    stride = self.governor.frame_stride(self.motion is not None)
                    if self.stats.frames % stride:
                        self.thermal_skipped += 1
                        self.stats.frames += 1
                        self._pace(period)
                        continue
                detect = self.stats.frames % self.interval == 0
                tensor = self.prepare(image) if detect else None
                prepared = time.perf_counter()
                frame = CapturedFrame(
                    index=self.stats.frames, wall=wall, mono_ns=mono_ns,
                    width=int(image.shape[1]), height=int(image.shape[0]), tensor=tensor,
                    discontinuity=discontinuity, capture_ms=(read_done - started) * 1e3,
                    preprocess_ms=(prepared - read_done) * 1e3,
                    image=image if self.keep_image else None, media_s=media_s, detect=detect,
                    replay=replay)
                discontinuity = False
                self.stats.frames += 1
                while not self._stop.is_set():
                    if self.out.put(frame, timeout=0.25) or self.out.policy != "block":
                        break
                self._pace(period)
        finally:
            if reader is not None:
                reader.close()
