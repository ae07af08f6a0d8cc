"""``lepton-agent bench kernels``: each native kernel against the OpenCV/numpy way of producing
the same tensor, measured interleaved in one run (medians of alternating rounds, so a noisy
machine slows both sides alike)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.kernels import Image, Preprocess, active, variant
from agent.kernels import reference as ref


@dataclass
class Case:
    name: str
    native: Callable[[], Any]
    baseline: Callable[[], Any]
    compare: Callable[[Any, Any], float]


def _per_call_ms(fn: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e3


def _max_diff(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _scene(width: int, height: int) -> npt.NDArray[np.uint8]:
    from agent.sources.synthetic import SyntheticScene

    scene = SyntheticScene(width, height, 30.0, seed=3)
    for _ in range(10):
        frame, _ = scene.step()
    return frame


def _nv12(bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    uv = np.empty((h // 2, w), np.uint8)
    uv[:, 0::2] = i420[h:h + h // 4].reshape(h // 2, w // 2)
    uv[:, 1::2] = i420[h + h // 4:].reshape(h // 2, w // 2)
    return np.vstack([i420[:h], uv])


def _yuyv(bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    out = np.empty((bgr.shape[0], bgr.shape[1], 2), np.uint8)
    out[..., 0] = yuv[..., 0]
    out[:, 0::2, 1] = yuv[:, 0::2, 1]
    out[:, 1::2, 1] = yuv[:, 0::2, 2]
    return out


def yolo_head_scene(objects: int = 25, seed: int = 5) -> npt.NDArray[np.float32]:
    """A YOLOv8/v11 head ``[1, 84, 8400]`` (640x640 input, 80 classes, boxes in pixels) as a
    trained model gives it: class scores near 0 almost everywhere, and around each object a
    few dozen anchors of its class with jittered boxes and scores up to ~0.9."""
    rng = np.random.default_rng(seed)
    n, classes = 8400, 80
    head = np.zeros((4 + classes, n), np.float32)
    head[0:2] = rng.random((2, n), dtype=np.float32) * 640
    head[2:4] = rng.random((2, n), dtype=np.float32) * 60 + 8
    head[4:] = rng.random((classes, n), dtype=np.float32) ** 6 * 0.2  # background: < 0.2
    for _ in range(objects):
        cx, cy = rng.random(2) * 560 + 40
        w, h = rng.random(2) * 150 + 20
        cls = int(rng.integers(classes))
        anchors = rng.choice(n, size=int(rng.integers(20, 60)), replace=False)
        jitter = rng.normal(0, 4, (4, anchors.size))
        head[0, anchors] = cx + jitter[0]
        head[1, anchors] = cy + jitter[1]
        head[2, anchors] = w + jitter[2] * 2
        head[3, anchors] = h + jitter[3] * 2
        head[4 + cls, anchors] = rng.uniform(0.3, 0.9, anchors.size).astype(np.float32)
    return head[None]


def yolo_numpy_cv2(head: npt.NDArray[np.float32], threshold: float, iou: float,
                   max_out: int) -> list[int]:
    """The usual Python decoding of a YOLOv8 head: transpose, best class, threshold, then one
    cv2.dnn.NMSBoxes over xywh boxes moved apart per class (the offset trick: class-wise NMS
    in one call); kept anchor indices, best first."""
    rows = head[0].T
    cls_scores = rows[:, 4:]
    classes = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(rows.shape[0]), classes]
    index = np.flatnonzero(scores >= threshold)
    r = rows[index]
    offset = (classes[index] * (float(np.abs(r[:, :4]).max(initial=0.0)) * 4 + 1))[:, None]
    xywh = np.stack([r[:, 0] - r[:, 2] / 2, r[:, 1] - r[:, 3] / 2, r[:, 2], r[:, 3]], axis=1)
    xywh[:, :2] += offset
    # No top_k: cv2 applies it to the candidates before NMS, not to what NMS keeps.
    keep = cv2.dnn.NMSBoxes(xywh.astype(np.float64).tolist(), scores[index].tolist(), 0.0, iou)
    return [int(index[i]) for i in np.asarray(keep, np.int64).reshape(-1)][:max_out]


def yolo_native(head: npt.NDArray[Any], threshold: float, iou: float, max_out: int) -> list[int]:
    """The agent's path: the native in-place decode, then the native class-wise NMS."""
    from agent.core.heads import yolo_layout

    layout = yolo_layout(head.shape, "yolo_v8")
    boxes, scores, classes, index = active.yolo_head(head, layout, 0.0, 0, threshold, 1.0, 1.0)
    return [int(index[i]) for i in active.nms(boxes, scores, classes, iou, max_out)]


def build_cases() -> list[Case]:
    kern = active
    cases: list[Case] = []
    nv12 = _nv12(_scene(1920, 1080))
    nv12_img = Image.nv12_buffer(nv12, 1920, 1080)
    def nv12_case(mode: str, interp: int) -> Case:
        spec = Preprocess(out_w=300, out_h=300, resize="area" if mode == "area" else "bilinear")
        out = np.empty((300, 300, 3), np.uint8)
        return Case(f"nv12_1080p_to_300_{mode}",
                    lambda: kern.preprocess(nv12_img, spec, out)[0],
                    lambda: cv2.resize(cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12), (300, 300),
                                       interpolation=interp),
                    _max_diff)

    cases.append(nv12_case("linear", cv2.INTER_LINEAR))
    cases.append(nv12_case("area", cv2.INTER_AREA))
    if getattr(kern, "cuda_available", lambda: False)():
        spec_gpu = Preprocess(out_w=300, out_h=300)
        out_gpu = np.empty((300, 300, 3), np.uint8)
        # Host frame in, host tensor out: the copies to and from the GPU are counted.
        cases.append(Case("nv12_1080p_to_300_linear_cuda",
                          lambda: kern.preprocess_cuda(nv12_img, spec_gpu, out_gpu),
                          lambda: cv2.resize(cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12), (300, 300),
                                             interpolation=cv2.INTER_LINEAR),
                          _max_diff))
    yuyv = _yuyv(_scene(1280, 720))
    yuyv_img = Image.packed("yuyv", yuyv)
    spec_yuyv = Preprocess(out_w=224, out_h=224)
    out_yuyv = np.empty((224, 224, 3), np.uint8)
    cases.append(Case(
        "yuyv_720p_to_224_linear",
        lambda: kern.preprocess(yuyv_img, spec_yuyv, out_yuyv)[0],
        lambda: cv2.resize(cv2.cvtColor(yuyv, cv2.COLOR_YUV2RGB_YUYV), (224, 224)),
        _max_diff))
    bgr = _scene(960, 540)
    bgr_img = Image.packed("bgr", bgr)
    spec_bgr = Preprocess(out_w=256, out_h=256)
    out_bgr = np.empty((256, 256, 3), np.uint8)
    cases.append(Case(
        "bgr_540p_to_256_linear",
        lambda: kern.preprocess(bgr_img, spec_bgr, out_bgr)[0],
        lambda: cv2.cvtColor(cv2.resize(bgr, (256, 256)), cv2.COLOR_BGR2RGB),
        _max_diff))
    rng = np.random.default_rng(7)
    corner = rng.random((1000, 2), dtype=np.float32) * 0.9
    size = rng.random((1000, 2), dtype=np.float32) * 0.1 + 0.01
    boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
    scores = rng.random(1000, dtype=np.float32)
    classes = rng.integers(0, 3, 1000).astype(np.int32)
    cases.append(Case(
        "nms_1000_boxes",
        lambda: kern.nms(boxes, scores, classes, 0.5, 100),
        lambda: ref.nms(boxes, scores, classes, 0.5, 100),
        lambda a, b: 0.0 if list(a) == list(b) else float("inf")))
    head = yolo_head_scene()
    # Kept sets compared as sets: cv2 orders equal scores its own way.
    cases.append(Case(
        "yolo_8400x80_decode_nms",
        lambda: yolo_native(head, 0.25, 0.45, 300),
        lambda: yolo_numpy_cv2(head, 0.25, 0.45, 300),
        lambda a, b: 0.0 if sorted(a) == sorted(b) else float("inf")))
    return cases


def bench_kernels(rounds: int = 7, budget_ms: float = 60.0,
                  only: str | None = None) -> dict[str, Any]:
    """Every case (or those whose name contains ``only``), native against baseline."""
    results = []
    for case in build_cases():
        if only and only not in case.name:
            continue
        native_out, base_out = case.native(), case.baseline()
        single = max(_per_call_ms(case.native, 3), _per_call_ms(case.baseline, 3), 1e-3)
        n = max(3, int(budget_ms / single))
        native_ms: list[float] = []
        base_ms: list[float] = []
        for _ in range(rounds):
            native_ms.append(_per_call_ms(case.native, n))
            base_ms.append(_per_call_ms(case.baseline, n))
        nat, base = statistics.median(native_ms), statistics.median(base_ms)
        results.append({"case": case.name, "native_ms": round(nat, 4), "baseline_ms": round(base, 4),
                        "speedup": round(base / nat, 2), "max_abs_diff": case.compare(native_out,
                                                                                   base_out)})
    return {"variant": variant(), "opencv_threads": cv2.getNumThreads(), "cases": results}
