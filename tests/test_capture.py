"""The capture thread: end of file, looping, and reconnecting a lost live source."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from agent.core.backoff import Backoff
from agent.core.uri import SourceUri, parse_source
from agent.errors import SourceError
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue, QueueClosed
from agent.sources.capture import CaptureWorker
from agent.sources.readers import open_reader
from agent.sources.synthetic import write_clip


def drain(q: BoundedQueue[CapturedFrame], timeout: float = 10) -> list[CapturedFrame]:
    out: list[CapturedFrame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            item = q.get(0.2)
        except QueueClosed:
            return out
        if item is not None:
            out.append(item)
    raise AssertionError("capture did not end")


def identity(image: np.ndarray) -> np.ndarray:
    return image[:2, :2]


def test_file_plays_once_then_ends(tmp_path: Path) -> None:
    clip = tmp_path / "c.avi"
    write_clip(str(clip), 64, 48, 10.0, 12)
    q: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 4, "block")
    worker = CaptureWorker(parse_source(str(clip)), q, identity, realtime=False)
    worker.start()
    frames = drain(q)
    assert [f.index for f in frames] == list(range(12))
    assert [f.discontinuity for f in frames] == [True] + [False] * 11
    assert frames[0].width == 64 and frames[0].height == 48


def test_file_loops_with_discontinuity(tmp_path: Path) -> None:
    clip = tmp_path / "c.avi"
    write_clip(str(clip), 32, 32, 10.0, 5)
    q: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 4, "block")
    worker = CaptureWorker(parse_source(str(clip)), q, identity, realtime=False, loop_file=True,
                           max_frames=12)
    worker.start()
    frames = drain(q)
    assert len(frames) == 12
    assert [i for i, f in enumerate(frames) if f.discontinuity] == [0, 5, 10]


def test_realtime_pacing_uses_source_fps(tmp_path: Path) -> None:
    clip = tmp_path / "c.avi"
    write_clip(str(clip), 32, 32, 50.0, 10)
    q: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 16, "drop_oldest")
    worker = CaptureWorker(parse_source(str(clip)), q, identity, realtime=True)
    worker.start()
    frames = drain(q)
    spread = (frames[-1].mono_ns - frames[0].mono_ns) / 1e9
    assert spread >= 9 / 50 * 0.8


class FlakyCamera:
    """A live source that fails every third read and cannot be reopened twice in a row."""

    fps = 0.0

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.reads = 0

    def read(self) -> np.ndarray | None:
        self.reads += 1
        if self.reads % 3 == 0:
            self.log.append("lost")
            return None
        return np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        self.log.append("closed")


def test_lost_live_source_reconnects_with_backoff() -> None:
    log: list[str] = []
    opens = {"n": 0}

    def factory(uri: SourceUri) -> FlakyCamera:
        opens["n"] += 1
        if opens["n"] in (2, 3):
            raise SourceError("cannot open", uri=uri.raw)
        log.append("opened")
        return FlakyCamera(log)

    uri = parse_source("v4l2:///dev/video7")
    q: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 64, "drop_oldest")
    worker = CaptureWorker(uri, q, identity, realtime=False, max_frames=6,
                           backoff=Backoff(0.01, 0.05, jitter=0.0), reader_factory=factory)
    started = time.monotonic()
    worker.start()
    frames = drain(q)
    assert len(frames) == 6
    assert worker.stats.reconnects >= 2 and opens["n"] >= 4
    assert sum(f.discontinuity for f in frames) == worker.stats.opens
    # backoff: two failed opens plus the lost reads each waited, so no busy loop
    assert time.monotonic() - started >= 0.01 + 0.02 + 0.04
    assert "lost" in (worker.stats.last_error or "")


def test_unopenable_file_is_fatal_and_named(tmp_path: Path) -> None:
    bogus = tmp_path / "clip.avi"
    bogus.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open") as info:
        open_reader(parse_source(str(bogus)))
    assert str(bogus) in str(info.value)
    with pytest.raises(SourceError, match="no such file"):
        open_reader(parse_source(str(tmp_path / "missing.mp4")))
    with pytest.raises(SourceError, match="no such device"):
        open_reader(parse_source("v4l2:///dev/video99"))


def test_gstreamer_absent_says_so() -> None:
    from agent.sources.readers import opencv_has_gstreamer

    if opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(SourceError, match="no GStreamer backend"):
        open_reader(parse_source("gst:videotestsrc ! appsink"))


def test_motion_gate_skips_static_frames_but_runs_every_n(tmp_path: Path) -> None:
    from agent.sources.capture import MotionGate

    class Still:
        fps = 0.0

        def __init__(self) -> None:
            self.n = 0

        def read(self) -> np.ndarray | None:
            self.n += 1
            frame = np.full((48, 64, 3), 60, np.uint8)
            if 20 <= self.n < 25:  # something moves through for five frames
                frame[10:30, 3 * self.n - 40:3 * self.n - 28] = 230
            return frame

        def close(self) -> None:
            pass

    gate = MotionGate(min_score=0.01, every_n=10, grid_width=32, pixel_threshold=25,
                      learning_rate=0.05)
    q: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 64, "block")
    worker = CaptureWorker(parse_source("v4l2:///dev/video0"), q, identity, realtime=False,
                           max_frames=40, reader_factory=lambda uri: Still(), motion=gate)
    worker.start()
    frames = drain(q)
    ran = [f.index for f in frames]
    assert ran[0] == 0  # a new scene always runs
    assert {20, 21, 22, 23, 24} <= set(ran)  # motion runs every frame
    assert all(b - a <= 10 for a, b in itertools.pairwise(ran))  # never more than every_n
    assert gate.skipped == 40 - len(ran) and gate.skipped > 20


def _write_frames(folder: Path, numbers: list[int], name: str = "{:04d}.bmp") -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        assert cv2.imwrite(str(folder / name.format(n)), np.full((24, 32, 3), n, np.uint8))


@pytest.mark.parametrize("numbers", [[1, 2, 3], [7, 8, 9, 10], [0, 5, 12]])
def test_image_sequence_reads_in_number_order_from_any_start(tmp_path: Path,
                                                             numbers: list[int]) -> None:
    _write_frames(tmp_path / "frames", numbers)
    (tmp_path / "frames" / "notes.txt").write_text("not a frame")
    reader = open_reader(parse_source(str(tmp_path / "frames" / "%04d.bmp")))
    values = []
    while (image := reader.read()) is not None:
        assert image.shape == (24, 32, 3)
        values.append(int(image[0, 0, 0]))
    reader.close()
    assert values == numbers


def test_image_sequence_unpadded_pattern_and_unreadable_frame_skipped(tmp_path: Path) -> None:
    _write_frames(tmp_path, [1, 2, 10], name="img{}.png")
    (tmp_path / "img3.png").write_bytes(b"not a png")
    reader = open_reader(parse_source(str(tmp_path / "img%d.png")))
    values = []
    while (image := reader.read()) is not None:
        values.append(int(image[0, 0, 0]))
    assert values == [1, 2, 10]


def test_image_sequence_through_the_capture_thread(tmp_path: Path) -> None:
    _write_frames(tmp_path / "f", [3, 4, 5, 6])
    q: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 8, "block")
    worker = CaptureWorker(parse_source(str(tmp_path / "f" / "%04d.bmp")), q, identity,
                           realtime=True)
    worker.start()
    frames = drain(q)
    worker.join(5)
    assert [f.index for f in frames] == [0, 1, 2, 3] and frames[0].discontinuity
    assert worker.stats.fatal is None and worker.stats.frames == 4


def test_image_sequence_without_files_is_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no file in .* matches %04d\.bmp"):
        open_reader(parse_source(str(tmp_path / "%04d.bmp")))
    with pytest.raises(SourceError, match="no such directory"):
        open_reader(parse_source(str(tmp_path / "absent" / "%04d.bmp")))


@pytest.mark.parametrize(("fps", "interval", "min_hz", "detected"), [
    (5.0, 3, 5.0, list(range(12))),          # 1.7 Hz would be too slow: every frame
    (15.0, 3, 5.0, list(range(0, 12, 3))),   # 5 Hz: as configured
    (10.0, 3, 4.0, list(range(0, 12, 2))),   # lowered to 2 (5 Hz), not to 1
    (5.0, 3, 0.0, list(range(0, 12, 3))),    # no minimum
])
def test_interval_lowered_to_the_minimum_detector_rate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, fps: float, interval: int, min_hz: float,
        detected: list[int]) -> None:
    clip = tmp_path / "c.avi"
    write_clip(str(clip), 32, 32, fps, 12)
    q: BoundedQueue[CapturedFrame] = BoundedQueue("frames", 4, "block")
    worker = CaptureWorker(parse_source(str(clip)), q, identity, realtime=False, interval=interval,
                           min_detector_hz=min_hz, name="capture-north")
    with caplog.at_level("WARNING", logger="agent.capture"):
        worker.start()
        frames = drain(q)
    assert [f.index for f in frames if f.detect] == detected
    assert all((f.tensor is not None) == f.detect for f in frames)
    lowered = [r.getMessage() for r in caplog.records if "min_detector_hz" in r.getMessage()]
    if len(detected) * interval > 12:
        assert lowered == [f"capture-north: the source runs at {fps:g} fps, so interval {interval} "
                           f"would run the detector at {fps / interval:.1f} Hz, under "
                           f"analytics.min_detector_hz ({min_hz:g}): running it every "
                           f"{12 // len(detected)} frame(s); the tracker loses vehicles between "
                           "detections that far apart (docs/analytics.md)"]
    else:
        assert lowered == []
