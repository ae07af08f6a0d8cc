"""Decoders of the heads users bring: YOLO (v5, v8, v11), SSD raw boxes + anchors, MoveNet
pose (single and multi), segmentation (argmax map or logits) and embeddings.

Pure numpy, no I/O. Hot steps take the native kernel from the caller (``nms``): agent/core
imports nothing else of the project, so the runner passes ``agent.kernels.active.nms``; the
default is the numpy reference :func:`agent.core.postprocess.nms`, which the native kernel
must match index for index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.core.contract.result import Detection, Embedding, Keypoint, Pose, Segment
from agent.core.manifest import COCO17_KEYPOINTS, Manifest
from agent.core.postprocess import FloatArray, dequantize, nms

NmsFn = Callable[[FloatArray, FloatArray, npt.NDArray[np.int32], float, int], list[int]]
I32 = npt.NDArray[np.int32]


# --------------------------------------------------------------------------- YOLO


@dataclass(frozen=True)
class YoloLayout:
    """Where a YOLO head's values lie in its output tensor ``[1, A, B]``.

    ``channels`` is 4 box values (cx, cy, w, h), an objectness for v5, then one score per
    class. v8/v11 exports put channels first (``[1, 4 + C, N]``), v5 exports anchors first
    (``[1, N, 5 + C]``); the smaller axis is the channel axis either way."""

    anchors: int
    channels: int
    channels_first: bool
    has_objectness: bool

    @property
    def classes(self) -> int:
        return self.channels - (5 if self.has_objectness else 4)

    @property
    def anchor_stride(self) -> int:
        return 1 if self.channels_first else self.channels

    @property
    def channel_stride(self) -> int:
        return self.anchors if self.channels_first else 1


def yolo_layout(shape: tuple[int, ...], decoder: str) -> YoloLayout:
    """The layout of a YOLO output of ``shape`` for decoder ``yolo_v5`` or ``yolo_v8``
    (v11 has v8's head). Raises ValueError for a shape no YOLO export has."""
    dims = [d for d in shape if d != 1] if len(shape) > 3 else list(shape[1:])
    if len(shape) < 2 or shape[0] != 1 or len(dims) != 2:
        raise ValueError(f"a YOLO head is [1, 4 + classes, N] or [1, N, 5 + classes], not "
                         f"{list(shape)}")
    a, b = dims
    has_obj = decoder == "yolo_v5"
    channels_first = a < b
    channels, anchors = (a, b) if channels_first else (b, a)
    if channels <= (5 if has_obj else 4):
        raise ValueError(f"YOLO head {list(shape)} has {channels} channels: {decoder} needs "
                         f"{'5' if has_obj else '4'} box values plus at least one class")
    return YoloLayout(anchors, channels, channels_first, has_obj)


def yolo_rows(raw: npt.NDArray[np.generic], layout: YoloLayout, scale: float,
              zero_point: int) -> FloatArray:
    """The head as ``[N, channels]`` real values (dequantized, anchors as rows); a float
    tensor's quantization parameters are ignored, as LiteRT reports none for it."""
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        scale = 0.0
    values = dequantize(raw, scale, zero_point).reshape(
        (layout.channels, layout.anchors) if layout.channels_first
        else (layout.anchors, layout.channels))
    return np.ascontiguousarray(values.T if layout.channels_first else values)


def yolo_candidates(raw: npt.NDArray[np.generic], layout: YoloLayout, scale: float,
                    zero_point: int, threshold: float, norm_w: float, norm_h: float,
                    ) -> tuple[FloatArray, FloatArray, I32, I32]:
    """Rows whose confidence reaches ``threshold``: (boxes ymin, xmin, ymax, xmax divided by
    (norm_h, norm_w); scores; classes; anchor indices), in anchor order. Confidence is the best
    class score, times objectness for v5; the best class is the first of equal scores. This is
    the reference of the native ``lk_yolo_decode_head``."""
    rows = yolo_rows(raw, layout, scale, zero_point)
    first = 5 if layout.has_objectness else 4
    cls_scores = rows[:, first:]
    classes = np.argmax(cls_scores, axis=1).astype(np.int32)
    best = cls_scores[np.arange(rows.shape[0]), classes]
    conf = (rows[:, 4] * best) if layout.has_objectness else best
    index = np.flatnonzero(conf >= np.float32(threshold)).astype(np.int32)
    r = rows[index]
    cx, cy = r[:, 0] / np.float32(norm_w), r[:, 1] / np.float32(norm_h)
    hw, hh = r[:, 2] / np.float32(norm_w) * np.float32(0.5), r[:, 3] / np.float32(norm_h) * np.float32(0.5)
    boxes = np.stack([cy - hh, cx - hw, cy + hh, cx + hw], axis=1).astype(np.float32)
    return boxes.reshape(-1, 4), conf[index].astype(np.float32), classes[index], index


def detections_from(boxes: FloatArray, scores: FloatArray, classes: I32, manifest: Manifest,
                    nms_fn: NmsFn = nms) -> list[Detection]:
    """Class-wise NMS over candidates, then at most ``max_results`` detections, best first,
    boxes clipped to the frame and ordered (ymin <= ymax, xmin <= xmax)."""
    keep = nms_fn(boxes, scores, classes, manifest.iou_threshold, manifest.max_results)
    out = []
    for i in keep:
        y0, x0, y1, x1 = (min(1.0, max(0.0, float(v))) for v in boxes[i])
        y0, y1 = min(y0, y1), max(y0, y1)  # a negative size (garbage in) still gives an
        x0, x1 = min(x0, x1), max(x0, x1)  # ordered box
        out.append(Detection(int(classes[i]), manifest.label(int(classes[i])), float(scores[i]),
                             (y0, x0, y1, x1)))
    return out


def box_norm(rows_box_max: float, input_w: int, input_h: int, units: str) -> tuple[float, float]:
    """What box values are divided by: 1 for normalized coordinates, the input size for
    pixels. ``auto`` decides from the largest box value seen (normalized exports stay
    within ~1; pixel ones reach tens or hundreds)."""
    if units == "normalized" or (units == "auto" and rows_box_max <= 2.0):
        return 1.0, 1.0
    return float(input_w), float(input_h)


# --------------------------------------------------------------------------- SSD raw


def sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    return out


def softmax(x: FloatArray) -> FloatArray:
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    out: FloatArray = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def ssd_decode(encodings: FloatArray, anchors: FloatArray,
               scales: tuple[float, float, float, float]) -> FloatArray:
    """Raw box encodings (ty, tx, th, tw) against anchors (ycenter, xcenter, h, w) to
    (ymin, xmin, ymax, xmax), as TFLite_Detection_PostProcess does."""
    e = encodings.reshape(-1, 4).astype(np.float32)
    a = anchors.reshape(-1, 4).astype(np.float32)
    s = np.asarray(scales, np.float32)
    yc = e[:, 0] / s[0] * a[:, 2] + a[:, 0]
    xc = e[:, 1] / s[1] * a[:, 3] + a[:, 1]
    h = np.exp(e[:, 2] / s[2]) * a[:, 2]
    w = np.exp(e[:, 3] / s[3]) * a[:, 3]
    out: FloatArray = np.stack([yc - h * np.float32(0.5), xc - w * np.float32(0.5),
                                yc + h * np.float32(0.5), xc + w * np.float32(0.5)],
                               axis=1).astype(np.float32)
    return out


def ssd_raw_candidates(boxes: FloatArray, class_scores: FloatArray, manifest: Manifest,
                       ) -> tuple[FloatArray, FloatArray, I32]:
    """Per anchor, the best class (after the score activation and without the background
    column when ``skip_background``) and its score; those reaching the threshold."""
    scores = class_scores.reshape(boxes.shape[0], -1).astype(np.float32)
    if manifest.score_activation == "sigmoid":
        scores = sigmoid(scores)
    elif manifest.score_activation == "softmax":
        scores = softmax(scores)
    if manifest.skip_background:
        scores = scores[:, 1:]
    classes = np.argmax(scores, axis=1).astype(np.int32)
    best = scores[np.arange(scores.shape[0]), classes]
    index = np.flatnonzero(best >= np.float32(manifest.score_threshold))
    return boxes[index], best[index].astype(np.float32), classes[index]


# --------------------------------------------------------------------------- pose

def _keypoints(values: FloatArray, names: list[str]) -> list[Keypoint]:
    """Rows of (y, x, score) to named keypoints, coordinates clipped to [0, 1]."""
    return [Keypoint(names[i] if i < len(names) else f"kp_{i}",
                     min(1.0, max(0.0, float(v[1]))), min(1.0, max(0.0, float(v[0]))),
                     float(v[2]))
            for i, v in enumerate(values)]


def movenet_single(raw: FloatArray, manifest: Manifest) -> list[Pose]:
    """MoveNet single-pose ``[1, 1, K, 3]`` (y, x, score per keypoint, normalized): one pose
    scored by its mean keypoint score, kept when that reaches the threshold."""
    kps = raw.reshape(-1, 3)
    score = float(kps[:, 2].mean()) if kps.size else 0.0
    if not score >= manifest.score_threshold:  # NaN fails too
        return []
    return [Pose(score, _keypoints(kps, manifest.keypoints or list(COCO17_KEYPOINTS)), None)]


def movenet_multi(raw: FloatArray, manifest: Manifest) -> list[Pose]:
    """MoveNet multi-pose ``[1, P, 56]``: per person 17 x (y, x, score) then ymin, xmin, ymax,
    xmax and the person's score. Persons reaching the threshold, best first."""
    rows = raw.reshape(-1, raw.shape[-1])
    k = (rows.shape[1] - 5) // 3
    names = manifest.keypoints or list(COCO17_KEYPOINTS)
    order = np.argsort(-rows[:, 3 * k + 4], kind="stable")
    poses: list[Pose] = []
    for i in order:
        score = float(rows[i, 3 * k + 4])
        if not score >= manifest.score_threshold or len(poses) >= manifest.max_results:
            continue
        box = tuple(min(1.0, max(0.0, float(v))) for v in rows[i, 3 * k:3 * k + 4])
        poses.append(Pose(score, _keypoints(rows[i, :3 * k].reshape(k, 3), names),
                          (box[0], box[1], box[2], box[3])))
    return poses


# --------------------------------------------------------------------------- segmentation


def class_map(raw: npt.NDArray[np.generic], logits: bool) -> npt.NDArray[np.int32]:
    """``[H, W]`` class ids from an argmax map ``[1, H, W]`` (or ``[1, H, W, 1]``) or from
    logits ``[1, H, W, C]``. Quantized logits need no dequantization: with a positive scale the
    argmax of the raw values is the argmax of the real ones."""
    a = np.asarray(raw)
    if logits:
        out: npt.NDArray[np.int32] = np.argmax(a.reshape(a.shape[-3], a.shape[-2], a.shape[-1]),
                                               axis=-1).astype(np.int32)
        return out
    return np.asarray(a.reshape(a.shape[1], a.shape[2]), dtype=np.int32)


def largest_component(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int, int, int]:
    """(pixels, ymin, xmin, ymax, xmax inclusive) of the largest 8-connected component of
    ``mask``; ties go to the component whose first pixel comes first in row order.

    Runs of each row are joined with overlapping (8-connected: touching diagonally) runs of
    the row above through union-find, so the work grows with the number of runs, not pixels."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    starts_r, starts_c = np.nonzero(d == 1)
    ends_r, ends_c = np.nonzero(d == -1)  # exclusive end columns, in the same row order
    n = len(starts_r)
    if n == 0:
        return 0, 0, 0, 0, 0
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(starts_r, np.arange(h + 1))
    for row in range(1, h):
        a, b = int(row_first[row - 1]), int(row_first[row])
        c, e = int(row_first[row]), int(row_first[row + 1])
        i, j = a, c
        while i < b and j < e:  # two sorted run lists: merge-walk the overlaps
            if starts_c[i] <= ends_c[j] and starts_c[j] <= ends_c[i]:  # touch incl. diagonal
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            if ends_c[i] < ends_c[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(i) for i in range(n)])
    lengths = (ends_c - starts_c).astype(np.int64)
    sizes = np.bincount(roots, weights=lengths, minlength=n)
    best = int(np.argmax(sizes))  # roots are each component's first run: ties go first
    members = roots == best
    return (int(sizes[best]), int(starts_r[members].min()), int(starts_c[members].min()),
            int(ends_r[members].max()), int(ends_c[members].max()) - 1)


def segments(classes: npt.NDArray[np.int32], manifest: Manifest) -> list[Segment]:
    """One segment per class present (background rows skipped when the label says so): its
    area as a fraction of the frame and the normalized box of its largest component, largest
    area first; those below ``min_area`` (a fraction) are left out."""
    h, w = classes.shape
    ids, counts = np.unique(classes, return_counts=True)
    out = []
    for cid, count in zip(ids.tolist(), counts.tolist(), strict=True):
        label = manifest.label(int(cid))
        if cid < 0 or (manifest.skip_background and _is_background(label, int(cid), manifest)):
            continue
        area = count / float(h * w)
        if area < manifest.min_area:
            continue
        _, y0, x0, y1, x1 = largest_component(classes == cid)
        out.append(Segment(int(cid), label, area,
                           (y0 / h, x0 / w, (y1 + 1) / h, (x1 + 1) / w)))
    out.sort(key=lambda s: (-s.area, s.class_id))
    return out[:manifest.max_results]


def _is_background(label: str, class_id: int, manifest: Manifest) -> bool:
    from agent.core.labels import is_background

    return is_background(label) or (not manifest.labels and class_id == 0)


# --------------------------------------------------------------------------- embedding


def embedding(raw: npt.NDArray[np.generic], scale: float, zero_point: int,
              normalize: bool) -> Embedding:
    """The output flattened to real values, L2-normalized when asked (a zero vector stays
    zero)."""
    v = dequantize(np.asarray(raw), scale, zero_point).reshape(-1).astype(np.float32)
    if normalize:
        norm = float(np.linalg.norm(v.astype(np.float64)))
        if norm > 0:
            v = (v / np.float32(norm)).astype(np.float32)
    return Embedding(int(v.size), tuple(float(x) for x in v), normalize)
