"""What passes between pipeline stages: the captured frame that capture hands to inference."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CapturedFrame:
    """A frame ready for inference: its tensor and where and when it came from."""

    index: int
    wall: float
    mono_ns: int
    width: int
    height: int
    tensor: np.ndarray | None
    discontinuity: bool
    capture_ms: float
    preprocess_ms: float
    queued_at: float = field(default_factory=time.perf_counter)
    image: np.ndarray | None = None
    # Seconds on the source's own clock: a file's position (frame index / its fps, so a file
    # played faster than real time still tracks at its own speed), a live source's monotonic
    # capture time.
    media_s: float = 0.0
    # False on the frames between two detector runs (``interval``): no tensor was prepared and
    # no model runs; the tracker predicts.
    detect: bool = True
    # True on a frame a restarted file source reads again only to rebuild the tracker: its
    # results were committed by the earlier run, so nothing of it is sent or counted again.
    replay: bool = False
