"""Turning output tensors into detections and classes (numpy; no I/O)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.core.contract.result import Classification, Detection
from agent.core.manifest import Manifest

FloatArray = npt.NDArray[np.float32]


def dequantize(raw: npt.NDArray[np.generic], scale: float, zero_point: int) -> FloatArray:
    """Real values of a (possibly quantized) tensor."""
    if scale == 0.0:
        return np.asarray(raw, dtype=np.float32)
    real: FloatArray = (raw.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
    return real


def top_classes(scores: FloatArray, manifest: Manifest) -> list[Classification]:
    """The ``max_results`` best classes whose score reaches the threshold, best first."""
    flat = scores.reshape(-1)
    k = min(manifest.max_results, flat.size)
    best = np.argpartition(-flat, k - 1)[:k]
    best = best[np.argsort(-flat[best], kind="stable")]
    return [
        Classification(int(i), manifest.label(int(i)), float(flat[i]))
        for i in best
        if flat[i] >= manifest.score_threshold
    ]


def ssd_detections(
    boxes: FloatArray, classes: FloatArray, scores: FloatArray, count: FloatArray,
    manifest: Manifest,
) -> list[Detection]:
    """Detections from the four outputs of TFLite_Detection_PostProcess."""
    n = min(int(count.reshape(-1)[0]), boxes.shape[1], manifest.max_results)
    out: list[Detection] = []
    for i in range(n):
        score = float(scores[0, i])
        if score < manifest.score_threshold:
            continue
        cls = int(classes[0, i])
        y0, x0, y1, x1 = (min(1.0, max(0.0, float(v))) for v in boxes[0, i])
        out.append(Detection(cls, manifest.label(cls), score, (y0, x0, y1, x1)))
    return out


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pairwise IoU of boxes given as rows of (ymin, xmin, ymax, xmax)."""
    ymin = np.maximum(a[:, None, 0], b[None, :, 0])
    xmin = np.maximum(a[:, None, 1], b[None, :, 1])
    ymax = np.minimum(a[:, None, 2], b[None, :, 2])
    xmax = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ymax - ymin, 0, None) * np.clip(xmax - xmin, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def nms(
    boxes: FloatArray, scores: FloatArray, classes: npt.NDArray[np.int32],
    iou_threshold: float, max_results: int,
) -> list[int]:
    """Class-aware greedy non-maximum suppression; indices kept, best score first.

    Ties in score keep the lower index first, so results are deterministic; NaN scores are
    never kept. This is also the reference of the native ``lk_nms``.
    """
    valid = np.flatnonzero(~np.isnan(scores))
    order = valid[np.lexsort((valid, -scores[valid]))]
    keep: list[int] = []
    if max_results <= 0:
        return keep
    suppressed = np.zeros(scores.size, dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) >= max_results:
            break
        rest = order[pos + 1:]
        rest = rest[(~suppressed[rest]) & (classes[rest] == classes[i])]
        if rest.size:
            ious = iou_matrix(boxes[i:i + 1], boxes[rest])[0]
            suppressed[rest[ious > np.float32(iou_threshold)]] = True
    return keep


def grid_detections(grid: FloatArray, manifest: Manifest, iou_threshold: float = 0.45) -> list[Detection]:
    """Detections from a single-scale grid head of shape [1, GH, GW, S x (5 + C)], S being the
    manifest's ``grid_slots`` (boxes per cell).

    Channels per slot: objectness, centre offset y and x within the cell, box height and
    width relative to the image (all already in [0, 1]), then class probabilities.
    """
    gh, gw = grid.shape[1], grid.shape[2]
    slots = manifest.grid_slots
    g = grid[0].reshape(gh, gw * slots, grid.shape[3] // slots)  # slot k of cell x: column x*S+k
    objectness = g[..., 0]
    class_probs = g[..., 5:]
    class_ids = np.argmax(class_probs, axis=-1).astype(np.int32)
    confidence = objectness * np.max(class_probs, axis=-1)
    ys, xs = np.nonzero(confidence >= manifest.score_threshold)
    if ys.size == 0:
        return []
    cy = (ys + g[ys, xs, 1]) / gh
    cx = (xs // slots + g[ys, xs, 2]) / gw
    h = g[ys, xs, 3]
    w = g[ys, xs, 4]
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1).astype(np.float32)
    boxes = np.clip(boxes, 0.0, 1.0)
    scores = confidence[ys, xs].astype(np.float32)
    classes = class_ids[ys, xs]
    keep = nms(boxes, scores, classes, iou_threshold, manifest.max_results)
    return [
        Detection(int(classes[i]), manifest.label(int(classes[i])), float(scores[i]),
                  (float(boxes[i, 0]), float(boxes[i, 1]), float(boxes[i, 2]), float(boxes[i, 3])))
        for i in keep
    ]
