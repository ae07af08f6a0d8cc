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
        delivered: list[tuple[float, int, bool]] = []  # (time, frame index, by the new runner)
        ended = threading.Event()
        holder: dict[str, ModelRunner] = {}

        def deliver(result: FrameResult) -> None:
            delivered.append((time.perf_counter(), result.frame_index,
                              worker.runner is holder.get("new")))

        worker = InferenceWorker(frames, old_runner, "bench", deliver, ended.set)
        started = time.perf_counter()
        worker.start()
        capture.start()
        time.sleep(seconds / 4)
        # the second interpreter, loaded and warmed while the first serves
        new_runner = ModelRunner(load_model(new_path, num_threads=1))
        for _ in range(WARM_INVOKES):
            new_runner.infer(new_runner.prepare(np.zeros((height, width, 3), np.uint8)))
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
    return {
        "source": source, "model": str(model), "fps": fps,
        "frame_interval_ms": round(1e3 / fps, 2),
        "swap_gap_ms": round(swap_gap, 2) if swap_gap is not None else None,
        "swap_within_one_frame_interval": swap_gap is not None and swap_gap <= 1e3 / fps,
        "max_gap_ms_steady": round(max(steady), 2) if steady else None,
        "median_gap_ms": round(statistics.median(gaps), 2) if gaps else None,
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
