"""Decoders of agent/core/heads.py and the native YOLO kernel: known answers, and properties
(box order, clipping, NMS idempotence, class-wise NMS, quantization round trips) against
references written here from the formulas (plain loops), or OpenCV's NMS."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core import heads
from agent.core.manifest import COCO17_KEYPOINTS, Manifest
from agent.core.postprocess import iou_matrix
from agent.kernels import reference as ref
from agent.kernels import variant

try:
    from agent.kernels import native
except ImportError:  # the numpy fallback still runs every reference test
    native = None  # type: ignore[assignment]

needs_native = pytest.mark.skipif(native is None, reason="native kernels not built")


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = {"name": "t", "task": "detection", "decoder": "yolo_v8",
                               "score_threshold": 0.25, "max_results": 100}
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def yolo_by_loops(head: np.ndarray, v5: bool, threshold: float, norm: float,
                  scale: float = 0.0, zero: int = 0) -> list[tuple[int, int, float, tuple]]:
    """(anchor, class, score, box) per anchor reaching the threshold, from plain loops over
    the documented layouts; float64 arithmetic."""
    a, b = head.shape[1], head.shape[2]
    channels_first = a < b
    n, ch = (b, a) if channels_first else (a, b)
    first = 5 if v5 else 4
    out = []
    for i in range(n):
        def value(c: int, i: int = i) -> float:
            q = float(head[0, c, i] if channels_first else head[0, i, c])
            return (q - zero) * scale if scale else q
        scores = [value(c) for c in range(first, ch)]
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))
        conf = scores[best] * value(4) if v5 else scores[best]
        if conf >= threshold - 1e-6:
            cx, cy, w, h = (value(c) / norm for c in range(4))
            out.append((i, best, conf, (cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2)))
    return out


def test_yolo_v8_and_v5_known_answers() -> None:
    # v8: [1, 4 + 3, 6], channels first; anchor 2 is class 1 at 0.9, anchor 4 class 2 at 0.3.
    v8 = np.zeros((1, 7, 10), np.float32)
    v8[0, :4, 2] = [320, 160, 64, 32]  # cx, cy, w, h in pixels of a 640 input
    v8[0, 5, 2] = 0.9
    v8[0, :4, 4] = [0.5, 0.5, 1.0, 1.0]
    v8[0, 6, 4] = 0.3
    layout = heads.yolo_layout(v8.shape, "yolo_v8")
    assert (layout.anchors, layout.channels, layout.channels_first, layout.classes) == (10, 7, True, 3)
    boxes, scores, classes, index = heads.yolo_candidates(v8, layout, 0, 0, 0.25, 640, 640)
    assert index.tolist() == [2, 4] and classes.tolist() == [1, 2]
    assert np.allclose(scores, [0.9, 0.3])
    assert np.allclose(boxes[0], [0.225, 0.45, 0.275, 0.55])
    # v5: [1, N, 5 + C]; confidence is objectness times the best class score.
    v5 = np.zeros((1, 9, 7), np.float32)
    v5[0, 1] = [0.5, 0.5, 0.2, 0.4, 0.8, 0.1, 0.5]
    v5[0, 3] = [0.5, 0.5, 0.2, 0.4, 0.2, 0.9, 0.1]  # 0.18 < 0.25
    layout = heads.yolo_layout(v5.shape, "yolo_v5")
    assert (layout.channels_first, layout.has_objectness, layout.classes) == (False, True, 2)
    boxes, scores, classes, index = heads.yolo_candidates(v5, layout, 0, 0, 0.25, 1, 1)
    assert index.tolist() == [1] and classes.tolist() == [1] and np.allclose(scores, [0.4])
    assert np.allclose(boxes[0], [0.3, 0.4, 0.7, 0.6])


@pytest.mark.parametrize(("shape", "decoder"), [((1, 84), "yolo_v8"), ((1, 4, 100), "yolo_v8"),
                                                ((1, 100, 5), "yolo_v5"), ((2, 84, 100), "yolo_v8")])
def test_yolo_layout_refuses_shapes_no_export_has(shape: tuple[int, ...], decoder: str) -> None:
    with pytest.raises(ValueError, match="YOLO head"):
        heads.yolo_layout(shape, decoder)


head_cases = st.tuples(
    st.sampled_from(["float32", "uint8", "int8"]),
    st.booleans(),  # v5
    st.booleans(),  # channels first (v8 style) or anchors first
    st.integers(1, 9),  # classes
    st.integers(1, 60),  # extra anchors beyond the channels
    st.integers(0, 2**32 - 1),
)


def _random_head(dtype: str, v5: bool, channels_first: bool, classes: int, extra: int,
                 seed: int) -> tuple[np.ndarray, float, int]:
    rng = np.random.default_rng(seed)
    ch = classes + (5 if v5 else 4)
    n = ch + extra
    shape = (1, ch, n) if channels_first else (1, n, ch)
    if dtype == "float32":
        return (rng.random(shape) ** 3).astype(np.float32), 0.0, 0
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    q = rng.integers(lo, hi, shape).astype(dtype)
    q[..., :2] = q[..., 2:4] if shape[-1] >= 4 else q[..., :2]  # some exact ties
    return q, float(rng.uniform(0.002, 0.01)), int(rng.integers(lo, hi))


@settings(max_examples=60, deadline=None)
@given(head_cases)
def test_yolo_candidates_match_plain_loops(case: tuple) -> None:
    dtype, v5, channels_first, classes, extra, seed = case
    head, scale, zero = _random_head(dtype, v5, channels_first, classes, extra, seed)
    decoder = "yolo_v5" if v5 else "yolo_v8"
    ch = classes + (5 if v5 else 4)
    if channels_first != (ch < ch + extra):  # the smaller axis is the channel axis
        return
    layout = heads.yolo_layout(head.shape, decoder)
    boxes, scores, cls, index = heads.yolo_candidates(head, layout, scale, zero, 0.3, 2.0, 2.0)
    expected = yolo_by_loops(head, v5, 0.3, 2.0, scale, zero)
    # Within float32 of the threshold a candidate may be in or out; compare away from it.
    keep = [i for i, e in enumerate(expected) if abs(e[2] - 0.3) > 1e-5]
    got = {int(a): k for k, a in enumerate(index)}
    for i in keep:
        a, c, conf, box = expected[i]
        assert a in got
        k = got[a]
        assert cls[k] == c and abs(scores[k] - conf) < 1e-5
        assert np.allclose(boxes[k], box, atol=1e-5)
        if box[2] >= box[0] and box[3] >= box[1]:  # non-negative sizes: box order holds
            assert boxes[k][0] <= boxes[k][2] and boxes[k][1] <= boxes[k][3]


@needs_native
@settings(max_examples=80, deadline=None)
@given(head_cases, st.floats(0.0, 1.0, width=32))
def test_native_yolo_head_equals_the_reference(case: tuple, threshold: float) -> None:
    dtype, v5, channels_first, classes, extra, seed = case
    head, scale, zero = _random_head(dtype, v5, channels_first, classes, extra, seed)
    layout = heads.yolo_layout(head.shape, "yolo_v5" if v5 else "yolo_v8")
    got = native.yolo_head(head, layout, scale, zero, threshold, 3.0, 5.0)
    want = ref.yolo_head(head, layout, scale, zero, threshold, 3.0, 5.0)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)  # bit for bit, every dtype and layout


@needs_native
def test_native_yolo_head_rejects_a_short_buffer() -> None:
    from agent.errors import KernelError

    layout = heads.YoloLayout(anchors=100, channels=10, channels_first=True, has_objectness=False)
    with pytest.raises(KernelError, match="100 anchors"):
        native.yolo_head(np.zeros(50, np.float32), layout, 0, 0, 0.5, 1, 1)


def test_quantized_head_round_trips_to_the_float_answer() -> None:
    rng = np.random.default_rng(4)
    real = rng.random((1, 12, 40)).astype(np.float32)
    scale, zero = 1 / 255, 0
    q = np.clip(np.round(real / scale) + zero, 0, 255).astype(np.uint8)
    on_grid = ((q.astype(np.float32) - zero) * np.float32(scale)).astype(np.float32)
    layout = heads.yolo_layout(q.shape, "yolo_v8")
    from_q = heads.yolo_candidates(q, layout, scale, zero, 0.5, 1, 1)
    from_f = heads.yolo_candidates(on_grid, layout, 0, 0, 0.5, 1, 1)
    for a, b in zip(from_q, from_f, strict=True):
        assert np.array_equal(a, b)
    int8 = (q.astype(np.int16) - 128).astype(np.int8)
    from_i8 = heads.yolo_candidates(int8, layout, scale, -128, 0.5, 1, 1)
    for a, b in zip(from_i8, from_f, strict=True):
        assert np.array_equal(a, b)


boxes_st = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, 2**32 - 1), st.integers(1, 4), st.floats(0.1, 0.9)))


def _boxes(n: int, seed: int, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corner = rng.random((n, 2), dtype=np.float32) * 0.8
    size = rng.random((n, 2), dtype=np.float32) * 0.3 + 0.01
    boxes = np.concatenate([corner, corner + size], axis=1).astype(np.float32)
    scores = (np.round(rng.random(n), 2) + 0.01).astype(np.float32)  # ties happen; > 0 for cv2
    return boxes, scores, rng.integers(0, classes, n).astype(np.int32)


@settings(max_examples=80, deadline=None)
@given(boxes_st)
def test_nms_properties_and_opencv_agree(case: tuple) -> None:
    n, seed, n_classes, iou = case
    boxes, scores, classes = _boxes(n, seed, n_classes)
    kern = native if native is not None else ref
    keep = kern.nms(boxes, scores, classes, iou, n)
    assert keep == ref.nms(boxes, scores, classes, iou, n)
    # Kept boxes of one class overlap at most by the threshold; scores never increase.
    kb, kc = boxes[keep], classes[keep]
    ious = iou_matrix(kb, kb)
    same = (kc[:, None] == kc[None, :]) & ~np.eye(len(keep), dtype=bool)
    assert not (ious[same] > np.float32(iou)).any()
    assert all(scores[a] >= scores[b] for a, b in itertools.pairwise(keep))
    # Idempotent: NMS of what NMS kept keeps it all.
    again = kern.nms(kb, scores[keep], kc, iou, n)
    assert sorted(again) == list(range(len(keep)))
    # Class-wise: the same as NMS per class (OpenCV's, an independent implementation).
    per_class: set[int] = set()
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        xywh = [[float(b[1]), float(b[0]), float(b[3] - b[1]), float(b[2] - b[0])]
                for b in boxes[idx]]
        kept = cv2.dnn.NMSBoxes(xywh, scores[idx].astype(float).tolist(), 0.0, iou)
        per_class |= {int(idx[k]) for k in np.asarray(kept, int).reshape(-1)}
    assert set(keep) == per_class or _near_threshold(boxes, classes, iou)


def _near_threshold(boxes: np.ndarray, classes: np.ndarray, iou: float) -> bool:
    """True when some same-class pair has an IoU within float rounding of the threshold
    (OpenCV computes it in double, we in float32: such pairs may go either way)."""
    m = iou_matrix(boxes, boxes)
    same = classes[:, None] == classes[None, :]
    return bool((np.abs(m[same] - iou) < 1e-5).any())


def test_detections_are_clipped_best_first_and_capped() -> None:
    boxes = np.array([[-0.2, 0.1, 0.5, 1.3], [0.6, 0.6, 0.9, 0.9], [0.0, 0.1, 0.5, 1.0]],
                     np.float32)
    scores = np.array([0.9, 0.5, 0.8], np.float32)
    classes = np.array([0, 1, 0], np.int32)
    m = _manifest(max_results=2, labels={0: "car", 1: "bus"})
    dets = heads.detections_from(boxes, scores, classes, m)
    assert [d.label for d in dets] == ["car", "bus"]  # box 2 suppressed by box 0 (same class)
    assert dets[0].box == pytest.approx((0.0, 0.1, 0.5, 1.0))
    # A head with a negative size (garbage, or a zero point off) still gives ordered boxes.
    flipped = heads.detections_from(np.array([[0.6, 0.7, 0.2, 0.1]], np.float32),
                                    np.array([0.9], np.float32), np.array([0], np.int32), m)
    assert flipped[0].box == pytest.approx((0.2, 0.1, 0.6, 0.7))


def test_ssd_decode_known_answer_and_native() -> None:
    anchors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    enc = np.array([[1.0, -2.0, 0.0, np.log(2) * 5]], np.float32)  # shift y, x; w doubles
    out = heads.ssd_decode(enc, anchors, (10, 10, 5, 5))
    # yc = 1/10*0.2+0.5 = 0.52, xc = -2/10*0.4+0.5 = 0.42, h = 0.2, w = 0.8
    assert np.allclose(out[0], [0.42, 0.02, 0.62, 0.82], atol=1e-6)
    if native is not None:
        assert np.array_equal(native.ssd_decode(enc, anchors, (10, 10, 5, 5)), out)


def test_ssd_raw_candidates_activation_and_background() -> None:
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]], np.float32)
    logits = np.array([[5.0, -3.0, 2.0], [5.0, -5.0, -5.0]], np.float32)  # col 0 background
    m = _manifest(decoder="ssd_raw", score_threshold=0.5)
    _b, s, c = heads.ssd_raw_candidates(boxes, logits, m)
    assert c.tolist() == [1] and np.allclose(s, [1 / (1 + np.exp(-2.0))])  # background ignored
    m2 = _manifest(decoder="ssd_raw", score_threshold=0.5, skip_background=False)
    assert heads.ssd_raw_candidates(boxes, logits, m2)[2].tolist() == [0, 0]


def test_movenet_single_and_multi_known_answers() -> None:
    single = np.zeros((1, 1, 17, 3), np.float32)
    single[0, 0, :, 0] = np.linspace(0.1, 0.9, 17)  # y
    single[0, 0, :, 1] = 0.5  # x
    single[0, 0, :, 2] = 0.6
    single[0, 0, 3] = [1.2, -0.1, 0.6]  # out of frame: clipped
    m = _manifest(task="pose", decoder="movenet", score_threshold=0.3)
    (pose,) = heads.movenet_single(single, m)
    assert [k.name for k in pose.keypoints] == list(COCO17_KEYPOINTS)
    assert abs(pose.score - 0.6) < 1e-6 and pose.box is None
    assert pose.keypoints[0].y == pytest.approx(0.1) and pose.keypoints[0].x == 0.5
    assert (pose.keypoints[3].y, pose.keypoints[3].x) == (1.0, 0.0)
    assert heads.movenet_single(single * [1, 1, 0.1], m) == []  # mean score 0.06 < 0.3
    multi = np.zeros((1, 6, 56), np.float32)
    multi[0, 2, :51] = np.tile([0.4, 0.6, 0.9], 17)
    multi[0, 2, 51:] = [0.1, 0.2, 0.8, 0.7, 0.85]
    multi[0, 4, 51:] = [0.0, 0.0, 0.5, 0.5, 0.95]
    multi[0, 5, 55] = 0.1  # below the threshold
    m = _manifest(task="pose", decoder="movenet_multi", score_threshold=0.3)
    poses = heads.movenet_multi(multi, m)
    assert [round(p.score, 2) for p in poses] == [0.95, 0.85]  # best first
    assert poses[1].box == pytest.approx((0.1, 0.2, 0.8, 0.7))
    assert poses[1].keypoints[16].name == "right_ankle" and poses[1].keypoints[16].x == pytest.approx(0.6)


def test_a_pose_scored_nan_is_not_kept() -> None:
    # A NaN score compares false with the threshold both ways: it must not pass it.
    single = np.full((1, 1, 17, 3), np.nan, np.float32)
    assert heads.movenet_single(single, _manifest(task="pose", decoder="movenet",
                                                  score_threshold=0.3)) == []
    multi = np.zeros((1, 2, 56), np.float32)
    multi[0, 0, 55] = np.nan
    multi[0, 1, 55] = 0.9
    poses = heads.movenet_multi(multi, _manifest(task="pose", decoder="movenet_multi",
                                                 score_threshold=0.3))
    assert [round(p.score, 2) for p in poses] == [0.9]


def components_by_flood(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """8-connected components by breadth-first flood fill: (pixels, ymin, xmin, ymax, xmax)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    out = []
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                stack, pix = [(y, x)], []
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    pix.append((cy, cx))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            ny, nx = cy + dy, cx + dx
                            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                stack.append((ny, nx))
                ys, xs = zip(*pix, strict=True)
                out.append((len(pix), min(ys), min(xs), max(ys), max(xs)))
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**32 - 1), st.floats(0.2, 0.7))
def test_largest_component_matches_a_flood_fill(h: int, w: int, seed: int, density: float) -> None:
    mask = np.random.default_rng(seed).random((h, w)) < density
    got = heads.largest_component(mask)
    comps = components_by_flood(mask)
    if not comps:
        assert got[0] == 0
        return
    biggest = max(c[0] for c in comps)
    assert got[0] == biggest and got in comps


def test_segments_area_box_and_background() -> None:
    cm = np.zeros((10, 20), np.int32)
    cm[2:5, 3:8] = 3  # 15 px, the largest piece of class 3
    cm[8, 18] = 3  # a 1-px piece elsewhere
    cm[0:10, 15] = 7
    m = _manifest(task="segmentation", decoder="argmax", labels={0: "background", 3: "bird",
                                                                  7: "pole"}, max_results=10)
    segs = heads.segments(cm, m)
    assert [s.label for s in segs] == ["bird", "pole"]  # background left out, largest first
    assert segs[0].area == pytest.approx(16 / 200)
    assert segs[0].box == pytest.approx((0.2, 0.15, 0.5, 0.4))
    assert segs[1].box == pytest.approx((0.0, 0.75, 1.0, 0.8))
    m.min_area = 0.06
    assert [s.label for s in heads.segments(cm, m)] == ["bird"]


def test_class_map_from_logits_quantized_and_float() -> None:
    rng = np.random.default_rng(3)
    logits = rng.integers(0, 256, (1, 5, 6, 4)).astype(np.uint8)
    assert np.array_equal(heads.class_map(logits, logits=True), logits[0].argmax(-1))
    argmax = rng.integers(0, 21, (1, 5, 6)).astype(np.int64)
    assert np.array_equal(heads.class_map(argmax, logits=False), argmax[0])


def test_embedding_dequantized_and_normalized() -> None:
    raw = np.array([[[[10, 20, 0, 30]]]], np.uint8)
    e = heads.embedding(raw, 0.5, 10, normalize=False)
    assert e.dim == 4 and e.values == (0.0, 5.0, -5.0, 10.0)
    n = heads.embedding(raw, 0.5, 10, normalize=True)
    assert np.linalg.norm(n.values) == pytest.approx(1.0) and n.normalized
    assert heads.embedding(np.zeros(3, np.float32), 0, 0, True).values == (0.0, 0.0, 0.0)


def test_the_kernel_variant_is_reported() -> None:
    assert variant() in ("avx2", "neon", "portable", "cuda", "numpy")
