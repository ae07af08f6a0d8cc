"""The watchdog's health check on the real capture worker and frame queue: what counts as
stuck (a hung source read, a hung outbox writer, inference idle while frames wait) and what
is only degraded (inference waiting for result slots while the writer retries a full disk)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from agent.core.thermal import ThermalGovernor
from agent.core.uri import parse_source
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue
from agent.service.health import SOURCE_OPEN_STALL_S, PipelineHealth
from agent.sources.capture import CaptureWorker
from tests.e2e import wait_for

STALL = 10.0


class HangingReader:
    """A live source whose reads return frames until ``hang`` is set, then block until
    ``release`` (like an RTSP read hung inside OpenCV)."""

    fps = 0.0

    def __init__(self) -> None:
        self.hang = threading.Event()
        self.release = threading.Event()

    def read(self) -> np.ndarray | None:
        if self.hang.is_set():
            self.release.wait()
            return None
        time.sleep(0.001)
        return np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        pass


def _health(capture: Any, frames: Any, held: list[int] | None = None) -> PipelineHealth:
    inference = SimpleNamespace(stats=SimpleNamespace(frames=0))
    return PipelineHealth("d", "s", "rtsp://cam/stream", "m", capture, inference,  # type: ignore[arg-type]
                          frames, None, None, None, None, ThermalGovernor(), 0.0, None,  # type: ignore[arg-type]
                          results_held=(lambda: len(held)) if held is not None else None,
                          result_slots=4)


def test_a_read_that_never_returns_is_stuck_even_with_an_empty_frame_queue() -> None:
    reader = HangingReader()
    frames: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 2, "drop_oldest")
    capture = CaptureWorker(parse_source("rtsp://cam/stream"), frames, lambda im: im,
                            realtime=False, reader_factory=lambda uri: reader)
    health = _health(capture, frames)
    capture.start()
    try:
        wait_for(lambda: capture.stats.frames > 5, "frames read")
        assert health.healthy(STALL)  # reads come and go
        reader.hang.set()
        wait_for(lambda: capture.busy_since is not None and capture.busy_with == "read"
                 and capture.blocked_for(time.monotonic()) > 0.05, "the read to hang")
        frames.clear()
        started = capture.busy_since
        assert started is not None
        assert health.healthy(STALL, started + STALL - 0.5)  # a slow read is not yet a hang
        problems = health.problems(STALL, started + STALL + 1)
        assert len(problems) == 1 and "capture: read of rtsp://cam/stream" in problems[0]
        assert capture.alive and len(frames) == 0  # only the heartbeat can tell
    finally:
        capture.stop()
        reader.release.set()
        capture.join(5)
    assert capture.busy_since is None


def test_an_open_that_never_returns_is_stuck_only_past_the_open_stall_time() -> None:
    """An unreachable camera blocks an open until the backend gives up (FFmpeg: 30 s) and is
    retried; a restart would not bring it back. An open hung for SOURCE_OPEN_STALL_S is."""
    release = threading.Event()

    def hanging_open(uri: Any) -> HangingReader:
        release.wait()
        return HangingReader()

    frames: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 2, "drop_oldest")
    capture = CaptureWorker(parse_source("rtsp://cam/stream"), frames, lambda im: im,
                            realtime=False, reader_factory=hanging_open)
    health = _health(capture, frames)
    capture.start()
    try:
        wait_for(lambda: capture.busy_since is not None, "the open to start")
        started = capture.busy_since
        assert started is not None and capture.busy_with == "open"
        assert health.healthy(STALL, started + 31)
        problems = health.problems(STALL, started + SOURCE_OPEN_STALL_S + 1)
        assert len(problems) == 1 and "capture: open of rtsp://cam/stream" in problems[0]
    finally:
        capture.stop()
        release.set()
        capture.join(5)


def test_a_failing_storage_holds_inference_back_without_starving_the_watchdog() -> None:
    frames: list[int] = [1]  # a frame waits while inference waits for a result slot
    capture = SimpleNamespace(alive=True, stats=SimpleNamespace(ended=False),
                              blocked_for=lambda now: 0.0, busy_with="")
    held = [1, 2, 3]
    h = _health(capture, frames, held)
    h.writer_went_round(retry_at=0.0, now=100.0)
    assert h.healthy(STALL, now=100.0)
    h.storage_failed("cannot commit records: disk full")
    assert not h.healthy(STALL, now=111.0)  # slots free, inference idle: a hang of its own
    held.append(4)  # every slot holds a result the storage has not taken
    h.writer_went_round(retry_at=115.0, now=105.0)  # retrying, the next try in 10 s
    assert h.healthy(STALL, now=124.0)
    assert h.problems(STALL, now=126.0) == ["outbox writer: no commit attempt for 11s"]
    h.writer_went_round(retry_at=0.0, now=126.0)
    assert h.healthy(STALL, now=130.0)
    assert (h.storage_errors, h.last_storage_error) == (1, "cannot commit records: disk full")
    h.writer_stopped()  # the writer ended (stopping): no longer watched
    assert h.healthy(STALL, now=1000.0)
