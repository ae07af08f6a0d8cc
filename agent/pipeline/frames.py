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
    tensor: np.ndarray
    discontinuity: bool
    capture_ms: float
    preprocess_ms: float
    queued_at: float = field(default_factory=time.perf_counter)
    image: np.ndarray | None = None
