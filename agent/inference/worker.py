"""The inference thread: frames in, FrameResults out, one interpreter, GIL released in invoke."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from agent.core.contract.result import Detection, FrameResult
from agent.errors import ModelError
from agent.inference.runner import ModelRunner, mask_png
from agent.pipeline.budget import ThreadBudget
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue, QueueClosed

log = logging.getLogger("agent.inference")
MAX_CONSECUTIVE_FAILURES = 10


@dataclass
class InferenceStats:
    frames: int = 0
    failures: int = 0
    detections: int = 0
    invoke_ms_total: float = 0.0
    fatal: ModelError | None = None
    first_result_at: float | None = None
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    last_result_at: float | None = None
    top1: Counter[str] = field(default_factory=Counter)  # classification: frames per top class
    top1_score: dict[str, float] = field(default_factory=dict)  # and its best score

    def count_top_class(self, label: str, score: float) -> None:
        self.top1[label] += 1
        self.top1_score[label] = max(score, self.top1_score.get(label, 0.0))

    def top_classes(self, n: int = 3) -> list[dict[str, Any]]:
        """The ``n`` most frequent top-1 classes: label, frames, best score."""
        return [{"label": label, "frames": frames, "score": round(self.top1_score[label], 4)}
                for label, frames in self.top1.most_common(n)]


@dataclass
class SnapshotPolicy:
    """JPEG snapshots of frames with detections, at most one per ``interval_s``."""

    interval_s: float
    min_detections: int = 1
    quality: int = 80
    last_at: float = -1e18
    taken: int = 0

    def take(self, image: np.ndarray, detections: int, now: float) -> bytes | None:
        if detections < self.min_detections or now - self.last_at < self.interval_s:
            return None
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return None
        self.last_at = now
        self.taken += 1
        return jpeg.tobytes()


@dataclass
class MaskPolicy:
    """Segmentation class maps as PNG blobs, at most one per ``interval_s``."""

    interval_s: float
    last_at: float = -1e18

    def take(self, mask: np.ndarray | None, now: float) -> bytes | None:
        if mask is None or now - self.last_at < self.interval_s:
            return None
        self.last_at = now
        return mask_png(mask)


class InferenceWorker:
    """Runs ``runner`` on frames from ``frames`` in the ``inference-{stream}`` thread.

    ``deliver`` hands each result on and may block (results are never dropped; the
    back-pressure lands on the frame queue, whose policy decides what is dropped). With a
    ``budget``, each invoke holds ``threads`` of the interpreter threads all pipelines share.
    """

    def __init__(self, frames: BoundedQueue[CapturedFrame], runner: ModelRunner, stream: str,
                 deliver: Callable[[FrameResult], None], on_done: Callable[[], None],
                 snapshots: SnapshotPolicy | None = None, budget: ThreadBudget | None = None,
                 threads: int = 1,
                 analyze: Callable[[CapturedFrame, list[Detection] | None], Any] | None = None,
                 publish_threshold: float | None = None,
                 masks: MaskPolicy | None = None,
                 observe: Callable[[CapturedFrame, list[Detection]], None] | None = None) -> None:
        self.frames = frames
        self.snapshots = snapshots
        self.runner = runner
        self.stream = stream
        self.deliver = deliver
        self.on_done = on_done
        self.stats = InferenceStats()
        self.budget = budget
        self.threads = threads
        self.analyze = analyze
        # Detections below this go to the analytics only (the model decodes lower for them).
        self.publish_threshold = publish_threshold
        self.masks = masks
        self.observe = observe  # the web console's latest-frame slot (agent.service.web.live)
        # A runner to switch to at the next frame boundary (model OTA) and who to tell.
        self._swap: tuple[ModelRunner, Callable[[ModelRunner], None]] | None = None
        self._swap_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"inference-{stream}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def fps(self, window_s: float = 10.0) -> float:
        """Results per second over the last ``window_s`` (0 when idle)."""
        now = time.perf_counter()
        times = [t for t in list(self.stats.recent) if now - t <= window_s]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

    def _count_frame(self) -> float:
        """One more frame through this stage (detected or predicted); returns the time."""
        now = time.perf_counter()
        self.stats.frames += 1
        if self.stats.first_result_at is None:
            self.stats.first_result_at = now
        self.stats.last_result_at = now
        self.stats.recent.append(now)
        return now

    def _predicted(self, frame: CapturedFrame, dequeued: float) -> None:
        """A frame the detector skips: only the analytics run (the tracker predicts); what
        they produced goes on, without a result record."""
        self._count_frame()
        if self.analyze is None:
            return
        analysis = self.analyze(frame, None)
        self.deliver(FrameResult(
            stream=self.stream, frame_index=frame.index, capture_wall=frame.wall,
            capture_mono_ns=frame.mono_ns, width=frame.width, height=frame.height,
            task=self.runner.manifest.task, discontinuity=frame.discontinuity,
            latency_ms={"queue": (dequeued - frame.queued_at) * 1e3}, detected=False,
            analytics=analysis))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def swap(self, runner: ModelRunner, swapped: Callable[[ModelRunner], None]) -> None:
        """Switch to ``runner`` between two frames: the frame being inferred finishes on the
        old runner, the next one (queued frames included) runs on the new. ``swapped(old)`` is
        called in the inference thread right after the switch, before the next frame. A
        pending swap not taken yet is replaced. No frame is dropped: the queue is untouched."""
        with self._swap_lock:
            self._swap = (runner, swapped)

    def _take_swap(self) -> None:
        with self._swap_lock:
            pending, self._swap = self._swap, None
        if pending is not None:
            old, self.runner = self.runner, pending[0]
            pending[1](old)

    def _run(self) -> None:
        consecutive = 0
        try:
            while True:
                if self._swap is not None:  # at a frame boundary
                    self._take_swap()
                try:
                    frame = self.frames.get(timeout=0.5)
                except QueueClosed:
                    return
                if frame is None:
                    continue
                if self._swap is not None:  # a swap asked for while waiting for this frame
                    self._take_swap()
                dequeued = time.perf_counter()
                tensor = frame.tensor
                if not frame.detect or tensor is None:  # between detector runs: tracker only
                    self._predicted(frame, dequeued)
                    continue
                try:
                    if self.budget is None:
                        out = self.runner.infer(tensor, discontinuity=frame.discontinuity)
                    else:
                        with self.budget.hold(self.threads):
                            out = self.runner.infer(tensor, discontinuity=frame.discontinuity)
                except ModelError as exc:
                    self.stats.failures += 1
                    consecutive += 1
                    log.error("%s", exc)
                    if consecutive >= MAX_CONSECUTIVE_FAILURES:
                        self.stats.fatal = exc
                        self.frames.close()
                        self.frames.clear()
                        return
                    continue
                consecutive = 0
                found = out.detections
                published = found if self.publish_threshold is None else [
                    d for d in found if d.score >= self.publish_threshold]
                self.stats.detections += len(published)
                if out.classes:
                    self.stats.count_top_class(out.classes[0].label, out.classes[0].score)
                self.stats.invoke_ms_total += out.invoke_ms
                now = self._count_frame()
                snapshot = None
                if self.snapshots is not None and frame.image is not None and not frame.replay:
                    snapshot = self.snapshots.take(frame.image, len(published), now)
                analyzed = time.perf_counter()
                analysis = self.analyze(frame, found) if self.analyze else None
                if self.observe is not None:
                    self.observe(frame, published)
                self.deliver(FrameResult(
                    stream=self.stream, frame_index=frame.index, capture_wall=frame.wall,
                    capture_mono_ns=frame.mono_ns, width=frame.width, height=frame.height,
                    task=self.runner.manifest.task, detections=published,
                    classes=out.classes, poses=out.poses, segments=out.segments,
                    embedding=out.embedding, discontinuity=frame.discontinuity,
                    latency_ms={"capture": frame.capture_ms, "preprocess": frame.preprocess_ms,
                                "queue": (dequeued - frame.queued_at) * 1e3,
                                "inference": out.invoke_ms, "postprocess": out.decode_ms,
                                **({"analytics": (time.perf_counter() - analyzed) * 1e3}
                                   if analysis is not None else {})},
                    snapshot=snapshot, analytics=analysis, detected=not frame.replay,
                    mask_png=(self.masks.take(out.mask, now)
                              if self.masks is not None and not frame.replay else None)))
        except Exception as exc:
            log.exception("inference thread failed")
            self.stats.fatal = ModelError(f"inference failed: {exc!r}",
                                          path=str(self.runner.model.path))
        finally:
            self.on_done()
