"""`lepton-agent bench ota`: what a model swap costs the stream (issue 18's OTA benchmark).

One pipeline's two threads (``CaptureWorker`` -> frame queue -> ``InferenceWorker``, the
runtime's own classes) play a generated traffic clip at its frame rate, paced as a live camera
(the queue drops the oldest frame when inference falls behind, so a stall shows as a lost
frame). A quarter of the way in, a second interpreter of the model (a copy of the bundle, as a
deployment installs it) is loaded and warmed while the first serves; half-way, the runner is
switched with ``InferenceWorker.swap``, the call a deployment's switch makes. Reported:

- ``swap_gap_ms``: the time between the last result of the old runner and the first of the new;
- ``max_gap_ms_steady``: the longest gap between two results away from the switch (the
  baseline the swap gap compares with), ``frame_interval_ms`` the clip's;
- ``frames_lost``: frames read from the clip that gave no result (dropped by the queue or
  never inferred), over the whole run; ``frames_lost_at_swap`` those between the old runner's
  last result and the new one's first.

The command round trip (``command_rtt_ms``) is ``bench commands``' figure, added by the CLI.
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.core.contract.result import FrameResult
from agent.core.uri import parse_source
from agent.inference.model import load_model
from agent.inference.runner import ModelRunner
from agent.inference.worker import InferenceWorker
from agent.pipeline.frames import CapturedFrame
from agent.pipeline.queues import BoundedQueue
from agent.sources.capture import CaptureWorker
from agent.sources.synthetic import write_clip

WARM_INVOKES = 3  # as agent.service.ota warms a second interpreter


def _clip_frame(clip: Path, width: int, height: int) -> np.ndarray:
    """A frame of the clip (its tenth), to warm the new interpreter on; blank if unreadable."""
    import cv2

    reader = cv2.VideoCapture(str(clip))
    try:
        image = None
        for _ in range(10):
            ok, frame = reader.read()
            if not ok:
                break
            image = frame
    finally:
        reader.release()
    return image if image is not None else np.zeros((height, width, 3), np.uint8)


def bench_swap(model: Path, *, seconds: float = 8.0, fps: float = 15.0, width: int = 640,
               height: int = 480, clip: Path | None = None) -> dict[str, Any]:
    """Play the clip through capture and inference, swap the model half-way; the figures."""
    with tempfile.TemporaryDirectory(prefix="lepton-bench-ota-") as tmp:
        work = Path(tmp)
        if clip is None:
            clip = work / "traffic.avi"
            write_clip(str(clip), width, height, fps, int(seconds * fps), seed=7,
                       scene="junction")
            source = f"generated {width}x{height} junction clip, {int(seconds * fps)} frames"
        else:
            source = str(clip)
        slot = work / "slot"
        shutil.copytree(model if model.is_dir() else model.parent, slot)
        new_path = slot if model.is_dir() else slot / model.name
        old_runner = ModelRunner(load_model(model, num_threads=1))
        frames: BoundedQueue[CapturedFrame] = BoundedQueue("frames-bench", 8, "drop_oldest")
        capture = CaptureWorker(parse_source(str(clip)), frames, old_runner.prepare,
                                realtime=True, name="capture-bench")
        # (time, frame index, by the new runner, invoke + decode ms, capture time in s)
        delivered: list[tuple[float, int, bool, float, float]] = []
        ended = threading.Event()
        holder: dict[str, ModelRunner] = {}

        def deliver(result: FrameResult) -> None:
            ms = result.latency_ms
            delivered.append((time.perf_counter(), result.frame_index,
                              worker.runner is holder.get("new"),
                              ms.get("inference", 0.0) + ms.get("postprocess", 0.0),
                              result.capture_mono_ns / 1e9))

        worker = InferenceWorker(frames, old_runner, "bench", deliver, ended.set)
        started = time.perf_counter()
        worker.start()
        capture.start()
        time.sleep(seconds / 4)
        # the second interpreter, loaded and warmed on a frame of the clip while the first
        # serves (as agent.service.ota warms it on the stream's next frame)
        new_runner = ModelRunner(load_model(new_path, num_threads=1))
        warm_input = new_runner.prepare(_clip_frame(clip, width, height))
        for _ in range(WARM_INVOKES):
            new_runner.infer(warm_input)
        new_runner.reset_state()
        holder["new"] = new_runner
        time.sleep(max(0.0, started + seconds / 2 - time.perf_counter()))
        switched = threading.Event()
        asked = time.perf_counter()
        worker.swap(new_runner, lambda _old: switched.set())
        switched.wait(10)
        took = time.perf_counter() - asked
        ended.wait(seconds * 4 + 30)
        capture.stop()
        capture.join(5)
        worker.join(5)
    read = capture.stats.frames
    first_new = next((i for i, d in enumerate(delivered) if d[2]), None)
    gaps = [(b[0] - a[0]) * 1e3 for a, b in itertools.pairwise(delivered)]
    swap_gap = gaps[first_new - 1] if first_new else None
    steady = [g for i, g in enumerate(gaps)
              if first_new is None or abs(i - (first_new - 1)) > 3]
    median_gap = statistics.median(gaps) if gaps else None
    # What the switch itself adds: the result gap less the gap between the two frames'
    # capture times (the camera's pacing, which no swap can shorten or lengthen).
    added = None
    if first_new:
        a, b = delivered[first_new - 1], delivered[first_new]
        added = (b[0] - a[0]) * 1e3 - (b[4] - a[4]) * 1e3
    steady_added = [((b[0] - a[0]) - (b[4] - a[4])) * 1e3
                    for i, (a, b) in enumerate(itertools.pairwise(delivered))
                    if first_new is None or abs(i - (first_new - 1)) > 3]
    old_ms = [d[3] for d in delivered if not d[2]]
    new_ms = [d[3] for d in delivered if d[2]]
    return {
        "source": source, "model": str(model), "fps": fps,
        "frame_interval_ms": round(1e3 / fps, 2),
        "swap_gap_ms": round(swap_gap, 2) if swap_gap is not None else None,
        "swap_within_one_frame_interval": swap_gap is not None and swap_gap <= 1e3 / fps,
        "max_gap_ms_steady": round(max(steady), 2) if steady else None,
        "median_gap_ms": round(median_gap, 2) if median_gap is not None else None,
        # the swap gap against this run's own typical gap (the machine's load moves both)
        "swap_gap_minus_median_ms": round(swap_gap - median_gap, 2)
        if swap_gap is not None and median_gap is not None else None,
        # the swap gap less the capture gap of its two frames, and the largest such figure
        # away from the switch (the same jitter without a swap)
        "swap_added_ms": round(added, 2) if added is not None else None,
        "max_added_ms_steady": round(max(steady_added), 2) if steady_added else None,
        # invoke + decode of the old runner's last frame and the new one's first frames,
        # against each runner's median: a cold new interpreter shows here
        "invoke_ms_old_last": round(old_ms[-1], 2) if old_ms else None,
        "invoke_ms_old_median": round(statistics.median(old_ms), 2) if old_ms else None,
        "invoke_ms_new_first": [round(m, 2) for m in new_ms[:3]],
        "invoke_ms_new_median": round(statistics.median(new_ms), 2) if new_ms else None,
        "frames_read": read, "results": len(delivered),
        "frames_lost": read - len(delivered), "queue_dropped": frames.stats.dropped,
        # frames between the old runner's last result and the new one's first that gave none
        "frames_lost_at_swap": (delivered[first_new][1] - delivered[first_new - 1][1] - 1)
        if first_new else None,
        "results_by_new_model": sum(1 for d in delivered if d[2]),
        "swap_request_to_switch_ms": round(took * 1e3, 2),
        "note": ("capture + inference threads of one pipeline on the clip paced at its frame "
                 "rate (drop_oldest: a stall loses frames); the second interpreter is warmed "
                 "while the first serves and switched in with InferenceWorker.swap"),
    }
