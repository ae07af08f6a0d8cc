"""The face every kernel backend shows: the native module (``agent.kernels.native``) and the numpy
reference (``agent.kernels.reference``) both satisfy ``KernelBackend``, checked by mypy through
the module assignments at the end of ``agent/kernels/__init__.py``."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from agent.core.heads import YoloLayout
from agent.kernels.reference import F32, Image, LetterboxInfo, MotionState, Preprocess


class MotionDetector(Protocol):
    """Motion gating over one stream: ``update(gray) -> (score, boxes)``."""

    def update(self, gray: npt.NDArray[np.uint8],
               capacity: int = 8) -> tuple[float, list[tuple[int, ...]]]: ...


class KernelBackend(Protocol):
    """Pre/post-processing kernels with the reference's semantics (bit-exact for preprocess)."""

    # Named as the class both backends define; calling it makes a detector.
    def Motion(self, state: MotionState) -> MotionDetector: ...

    def preprocess(self, image: Image, spec: Preprocess) -> tuple[npt.NDArray[Any], LetterboxInfo]: ...

    def dequantize(self, q: npt.NDArray[np.integer], scale: float, zero_point: int) -> F32: ...

    def ssd_decode(self, encodings: F32, anchors: F32,
                   scales: tuple[float, float, float, float]) -> F32: ...

    def yolo_decode(self, rows: F32, has_objectness: bool, threshold: float, input_w: float,
                    input_h: float) -> tuple[F32, F32, npt.NDArray[np.int32]]: ...

    def yolo_head(self, raw: npt.NDArray[Any], layout: YoloLayout, scale: float, zero_point: int,
                  threshold: float, norm_w: float, norm_h: float,
                  ) -> tuple[F32, F32, npt.NDArray[np.int32], npt.NDArray[np.int32]]: ...

    def nms(self, boxes: F32, scores: F32, classes: npt.NDArray[np.int32], iou_threshold: float,
            max_out: int) -> list[int]: ...

    def topk(self, scores: F32, k: int) -> list[int]: ...
