"""The kernels' numpy reference against the independent model and known answers, fast and
deterministic: the tests ``make mutants`` runs for ``agent/kernels/reference.py`` (the hypothesis
tests in test_kernels.py cover the same ground more widely, too slowly for thousands of mutants).
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.kernels import Image, MotionState, Preprocess
from agent.kernels import reference as ref
from tests import independent_reference as ind


def _image(fmt: str, w: int, h: int, seed: int, padded: bool = False) -> Image:
    rng = np.random.default_rng(seed)
    extra = 5 if padded else 0
    if fmt == "nv12":
        cw, ch = (w + 1) // 2, (h + 1) // 2
        return Image.nv12(rng.integers(0, 256, (h, w + extra), dtype=np.uint8)[:, :w],
                          rng.integers(0, 256, (ch, 2 * cw + extra), dtype=np.uint8)[:, :2 * cw])
    bpp = {"yuyv": 2, "bgr": 3, "rgb": 3, "gray": 1}[fmt]
    base = rng.integers(0, 256, (h, w + extra, bpp), dtype=np.uint8)[:, :w]
    return Image.packed(fmt, base[..., 0] if fmt == "gray" else base)  # type: ignore[arg-type]


def _model(image: Image, spec: Preprocess) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    return ind.preprocess(image.format, image.planes, image.width, image.height, out_w=spec.out_w,
                          out_h=spec.out_h, out_c=spec.out_c, dtype=spec.dtype, rgb=spec.rgb,
                          resize=spec.resize, roi=spec.roi, letterbox_on=spec.letterbox,
                          pad_value=spec.pad_value, mul=spec.mul, add=spec.add)


QUANT = {
    "u8": ("uint8", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    "u8q": ("uint8", (0.5, 1.25, 0.75), (3.5, -7.25, 0.5)),
    "i8": ("int8", (1.0, 0.5, 2.0), (-128.0, -64.5, -200.0)),
    "f32": ("float32", (1 / 127.5, 0.017, 2.5), (-1.0, 0.25, -3.0)),
}

# (format, source w, h, ROI, out w, h, out_c, resize, letterbox, rgb, quant, pad)
CASES = [
    ("nv12", 23, 17, None, 9, 7, 3, "bilinear", False, True, "u8", 0),
    ("nv12", 23, 17, (3, 1, 15, 13), 31, 11, 3, "bilinear", False, False, "i8", 7),
    ("nv12", 40, 30, (5, 3, 30, 21), 12, 9, 3, "area", False, True, "u8", 0),
    ("nv12", 41, 31, None, 24, 13, 3, "area", True, False, "f32", 114),
    ("nv12", 20, 14, (1, 1, 17, 11), 8, 8, 1, "area", False, True, "u8q", 9),
    ("nv12", 16, 16, None, 33, 29, 3, "bilinear", True, True, "u8q", 200),
    ("yuyv", 24, 15, None, 10, 6, 3, "bilinear", False, True, "u8", 0),
    ("yuyv", 30, 19, (4, 2, 22, 15), 13, 17, 3, "area", False, False, "i8", 0),
    ("yuyv", 18, 12, (2, 0, 14, 12), 25, 9, 3, "bilinear", True, True, "f32", 50),
    ("yuyv", 26, 21, None, 7, 7, 1, "bilinear", False, True, "u8", 0),
    ("yuyv", 40, 24, None, 24, 10, 3, "area", True, True, "u8", 33),
    ("bgr", 37, 23, None, 11, 9, 3, "bilinear", False, True, "u8", 0),
    ("bgr", 37, 23, (2, 3, 30, 17), 16, 12, 3, "area", False, False, "u8q", 0),
    ("bgr", 19, 40, None, 27, 24, 1, "area", False, True, "i8", 23),
    ("bgr", 12, 9, None, 40, 30, 3, "bilinear", True, False, "f32", 255),
    ("bgr", 50, 10, None, 20, 20, 1, "bilinear", True, True, "u8", 1),
    ("rgb", 21, 13, (1, 2, 17, 9), 9, 5, 3, "bilinear", False, True, "i8", 0),
    ("rgb", 33, 27, None, 10, 10, 3, "area", True, False, "u8", 90),
    ("rgb", 15, 15, None, 15, 15, 1, "area", False, True, "f32", 0),
    ("gray", 31, 17, None, 12, 8, 1, "bilinear", False, True, "u8", 0),
    ("gray", 31, 17, (4, 4, 20, 10), 9, 13, 3, "area", True, True, "u8q", 17),
    ("gray", 54, 19, (6, 1, 30, 9), 26, 39, 3, "area", False, False, "f32", 194),
    ("gray", 10, 85, None, 7, 61, 1, "area", True, True, "u8", 5),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[7]}-{c[10]}-{i}" for i, c in enumerate(CASES)])
def test_reference_equals_independent_model(case: tuple) -> None:  # type: ignore[type-arg]
    fmt, w, h, roi, ow, oh, oc, resize, letterbox, rgb, quant, pad = case
    dtype, mul, add = QUANT[quant]
    image = _image(fmt, w, h, seed=w * 100 + h, padded=True)
    spec = Preprocess(out_w=ow, out_h=oh, out_c=oc, dtype=dtype, rgb=rgb, resize=resize, roi=roi,
                      letterbox=letterbox, pad_value=pad, mul=mul, add=add)
    got, info = ref.preprocess(image, spec)
    want, geometry = _model(image, spec)
    assert (info.content_w, info.content_h, info.offset_x, info.offset_y) == geometry
    assert info.scale == pytest.approx(geometry[0] / (roi[2] if roi else w), rel=1e-6)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.array_equal(got, want), np.argwhere(got != want)[:3]


def test_yuv_constants_and_clamps() -> None:
    y = np.array([0, 16, 17, 128, 235, 255, 16, 16, 200, 81])
    u = np.array([128, 128, 0, 255, 128, 90, 0, 255, 30, 240])
    v = np.array([128, 0, 255, 128, 255, 200, 0, 255, 220, 110])
    got = ref.yuv_to_rgb(y, u, v)
    want = ind.yuv_to_rgb(y, u, v)
    for g, w in zip(got, want, strict=True):
        assert g.tolist() == w.tolist()


def test_quantize_rounds_half_even_and_saturates() -> None:
    values = np.arange(256, dtype=np.int64)
    for dtype, mul, add in (("uint8", 0.5, 0.0), ("uint8", 1.5, -60.0), ("int8", 0.5, -64.0),
                            ("int8", 2.0, -300.5), ("float32", 0.25, 1.5)):
        spec = Preprocess(out_w=1, out_h=1, dtype=dtype, mul=(mul,) * 3, add=(add,) * 3)  # type: ignore[arg-type]
        got = ref._quantize(values, spec, 1)
        want = ind.quantize(values, dtype, mul, add, identity=False)
        assert got.dtype == want.dtype and np.array_equal(got, want), dtype


def test_images_and_specs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"gray image must be \(H, W\)"):
        Image.packed("gray", np.zeros((2, 2, 1), np.uint8))
    with pytest.raises(ValueError, match=r"bgr image must be \(H, W, 3\), got \(2, 2, 2\)"):
        Image.packed("bgr", np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"rgb image must be \(H, W, 3\), got \(2, 6\)"):
        Image.packed("rgb", np.zeros((2, 6), np.uint8))
    with pytest.raises(ValueError, match="contiguous"):
        Image.packed("bgr", np.zeros((4, 8, 3), np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="2-D"):
        Image.nv12(np.zeros((2, 2, 1), np.uint8), np.zeros((1, 2), np.uint8))
    with pytest.raises(ValueError, match=r"nv12 buffer must be \(4, 4\) with even sizes"):
        Image.nv12_buffer(np.zeros((6, 4), np.uint8), 4, 3)
    with pytest.raises(ValueError, match="even sizes"):
        Image.nv12_buffer(np.zeros((6, 4), np.uint8), 3, 4)
    buf = np.arange(24, dtype=np.uint8).reshape(6, 4)
    nv = Image.nv12_buffer(buf, 4, 4)
    assert (nv.width, nv.height) == (4, 4) and nv.planes[0].base is not None
    assert np.array_equal(nv.planes[0], buf[:4]) and np.array_equal(nv.planes[1], buf[4:])
    gray = Image.packed("gray", np.zeros((3, 5), np.uint8))
    assert (gray.format, gray.width, gray.height) == ("gray", 5, 3)
    yuyv = Image.packed("yuyv", np.zeros((3, 8), np.uint8))
    assert (yuyv.width, yuyv.height, yuyv.planes[0].shape) == (4, 3, (3, 8))
    yuyv3 = Image.packed("yuyv", np.zeros((3, 4, 2), np.uint8))
    assert (yuyv3.width, yuyv3.planes[0].shape) == (4, (3, 8))
    strided = np.zeros((3, 6, 3), np.uint8)[:, 1:5]
    bgr = Image.packed("bgr", strided)
    assert (bgr.width, bgr.height, bgr.planes[0].shape, bgr.planes[0].strides) == (4, 3, (3, 12), (18, 1))
    assert ref.BYTES_PER_PIXEL == {"nv12": 1, "yuyv": 2, "bgr": 3, "rgb": 3, "gray": 1}


def test_spec_defaults() -> None:
    spec = Preprocess(out_w=4, out_h=3)
    assert (spec.out_c, spec.dtype, spec.rgb, spec.resize, spec.roi, spec.letterbox, spec.pad_value,
            spec.mul, spec.add) == (3, "uint8", True, "bilinear", None, False, 0, (1.0,) * 3, (0.0,) * 3)
    state = MotionState(8, 4)
    assert (state.alpha_q8, state.threshold, state.background) == (13, 25, None)


def test_dequantize_and_decoders_known_answers() -> None:
    q = np.array([0, 128, 255], np.uint8)
    out = ref.dequantize(q, 0.5, 128)
    assert out.dtype == np.float32 and out.tolist() == [-64.0, 0.0, 63.5]
    enc = np.array([[10.0, -10.0, 0.0, np.log(2.0) * 5]], np.float32)
    anchors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    box = ref.ssd_decode(enc, anchors, (10.0, 10.0, 5.0, 5.0))
    # yc = 1 * 0.2 + 0.5, xc = -1 * 0.4 + 0.5, h = 0.2, w = 2 * 0.4
    assert box.dtype == np.float32
    assert np.allclose(box, [[0.6, -0.3, 0.8, 0.5]], atol=1e-6)
    rows = np.array([[320, 240, 64, 48, 0.9, 0.1, 0.8, 0.3],
                     [100, 100, 10, 10, 0.2, 0.9, 0.1, 0.0],
                     [10, 20, 4, 8, 0.5, 0.2, 0.3, 0.9]], np.float32)
    boxes, conf, cls = ref.yolo_decode(rows, True, 0.4, 640, 480)
    assert cls.tolist() == [1, 2] and cls.dtype == np.int32
    assert np.allclose(conf, [0.9 * 0.8, 0.5 * 0.9])
    assert np.allclose(boxes[0], [0.45, 0.45, 0.55, 0.55])
    no_objectness = np.concatenate([rows[:, :4], rows[:, 5:]], axis=1)
    boxes, conf, cls = ref.yolo_decode(no_objectness, False, 0.85, 640, 480)
    assert cls.tolist() == [0, 2] and np.allclose(conf, [0.9, 0.9])
    assert np.allclose(boxes[1], [(20 - 4) / 480, (10 - 2) / 640, (20 + 4) / 480, (10 + 2) / 640])


def test_order_topk_and_nms() -> None:
    scores = np.array([0.5, np.nan, 0.9, 0.5, 0.1], np.float32)
    assert ref.order_by_score(scores).tolist() == [2, 0, 3, 4]
    assert ref.topk(np.nan_to_num(scores), 2) == [2, 0]
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.95, 1], [0.5, 0.5, 0.6, 0.6]], np.float32)
    assert ref.nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.zeros(3, np.int32), 0.5, 10) == [0, 2]


def test_motion_known_answers() -> None:
    state = MotionState(6, 4, alpha_q8=64, threshold=10)
    first = np.full((4, 6), 100, np.uint8)
    assert ref.motion_update(state, first) == (0.0, [])
    assert state.background is not None and state.background.dtype == np.uint16
    assert state.background.tolist() == [[100 << 8] * 6] * 4
    frame = first.copy()
    frame[0:2, 0:2] = 200  # a 2x2 mover
    frame[3, 5] = 150      # and a lone pixel, 8-connected to nothing
    frame[2, 5] = 105      # changed by less than the threshold
    score, regions = ref.motion_update(state, frame, capacity=8)
    assert score == pytest.approx(5 / 24)
    assert regions == [(0, 0, 1, 1, 4), (5, 3, 5, 3, 1)]
    # background moved a quarter of the way (alpha 64/256) towards the frame, down or up
    assert state.background[0, 0] == (100 << 8) + (100 << 8) * 64 // 256
    assert state.background[2, 5] == (100 << 8) + (5 << 8) * 64 // 256
    assert state.background[1, 3] == 100 << 8
    down = MotionState(1, 1, alpha_q8=64, threshold=10)
    ref.motion_update(down, np.array([[200]], np.uint8))
    ref.motion_update(down, np.array([[100]], np.uint8))
    assert down.background is not None and down.background[0, 0] == (200 << 8) - (100 << 8) * 64 // 256
    capped = MotionState(6, 4, alpha_q8=64, threshold=10)
    ref.motion_update(capped, first)
    assert ref.motion_update(capped, frame, capacity=1)[1] == [(0, 0, 1, 1, 4)]
    none = MotionState(6, 4, alpha_q8=64, threshold=10)
    ref.motion_update(none, first)
    assert ref.motion_update(none, frame, capacity=0) == (pytest.approx(5 / 24), [])
    diagonal = MotionState(4, 4, threshold=10)
    ref.motion_update(diagonal, np.zeros((4, 4), np.uint8))
    moved = np.zeros((4, 4), np.uint8)
    moved[0, 0] = moved[1, 1] = moved[2, 2] = 90  # 8-connected along the diagonal
    moved[0, 3] = 90
    assert ref.Motion(diagonal).update(moved)[1] == [(0, 0, 2, 2, 3), (3, 0, 3, 0, 1)]


def test_more_known_answers_for_the_helpers() -> None:
    with pytest.raises(ValueError, match=r"^nv12 planes must be 2-D \(rows, bytes\)$"):
        Image.nv12(np.zeros((2, 2), np.uint8), np.zeros((1, 2, 1), np.uint8))
    for shape, w, h in (((6, 3), 3, 4), ((4, 4), 4, 3)):  # right shape, odd size
        with pytest.raises(ValueError, match="even sizes"):
            Image.nv12_buffer(np.zeros(shape, np.uint8), w, h)
    enc = np.array([[2.0, 3.0, 1.0, 2.0]], np.float32)
    anchors = np.array([[0.2, 0.6, 0.5, 0.25]], np.float32)
    box = ref.ssd_decode(enc, anchors, (4.0, 2.0, 8.0, 16.0))
    yc, xc = 2.0 / 4.0 * 0.5 + 0.2, 3.0 / 2.0 * 0.25 + 0.6
    h, w = np.exp(1.0 / 8.0) * 0.5, np.exp(2.0 / 16.0) * 0.25
    assert np.allclose(box, [[yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]], atol=1e-6)
    rows = np.array([[64, 48, 32, 24, 0.5, 1.0, 0.0], [64, 48, 32, 24, 0.25, 1.0, 0.0]], np.float32)
    boxes, conf, cls = ref.yolo_decode(rows, True, 0.5, 640, 480)  # 0.5 * 1.0 is kept, 0.25 not
    assert conf.tolist() == [0.5] and cls.tolist() == [0]
    assert boxes.dtype == np.float32 and conf.dtype == np.float32 and cls.dtype == np.int32
    order = ref.order_by_score(np.array([0.1, 0.3], np.float32))
    assert order.dtype == np.int64 and order.tolist() == [1, 0]
    assert ref.dequantize(np.array([3], np.int8), 0.1, 0).dtype == np.float32


def test_motion_thresholds_connectivity_and_order() -> None:
    state = MotionState(8, 6, alpha_q8=13, threshold=15)
    base = np.full((6, 8), 100, np.uint8)
    ref.motion_update(state, base)
    frame = base.copy()
    frame[0, 0] = 115        # exactly the threshold: not moving
    frame[0, 2] = 116        # one over: moving, a lone pixel first in raster order
    # a U: down, along, and back up (needs dy = -1 to join), and a '/' (needs dx = -1)
    for y, x in ((2, 4), (3, 4), (4, 4), (4, 5), (4, 6), (3, 6), (2, 6), (1, 7)):
        frame[y, x] = 160
    for y, x in ((3, 1), (4, 0)):
        frame[y, x] = 40
    score, regions = ref.Motion(state).update(frame, capacity=3)
    assert score == pytest.approx(11 / 48)
    assert regions == [(4, 1, 7, 4, 8), (0, 3, 1, 4, 2), (2, 0, 2, 0, 1)]
    assert ref.Motion(state).update(frame, capacity=1)[1][0][4] == 8
    assert state.background is not None and state.background.dtype == np.uint16
    # three steps down from 200 with alpha 13: the integer steps floor towards the background
    down = MotionState(1, 1, alpha_q8=13, threshold=255)
    ref.motion_update(down, np.array([[200]], np.uint8))
    values = []
    for _ in range(3):
        ref.motion_update(down, np.array([[0]], np.uint8))
        assert down.background is not None
        values.append(int(down.background[0, 0]))
    expected, back = [], 200 << 8
    for _ in range(3):
        back = back - (back * 13) // 256
        expected.append(back)
    assert values == expected


def _random_case(seed: int) -> tuple[Image, Preprocess]:
    """A fixed pseudo-random case (ROIs with even and odd corners, up- and downscaling)."""
    rng = np.random.default_rng(seed)
    fmt = ["nv12", "yuyv", "bgr", "rgb", "gray"][seed % 5]
    w, h = int(rng.integers(2, 40)), int(rng.integers(2, 30))
    if fmt == "yuyv":
        w += w % 2
    roi = None
    if seed % 3:
        rx, ry = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        rw, rh = int(rng.integers(1, w - rx + 1)), int(rng.integers(1, h - ry + 1))
        if fmt == "yuyv":
            rx -= rx % 2
            rw = max(2, rw - rw % 2)
            if rx + rw > w:
                rx = 0
        roi = (rx, ry, rw, rh)
    quant = list(QUANT)[seed % 4]
    dtype, mul, add = QUANT[quant]
    if seed % 7 == 0:
        dtype, mul, add = "int8", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)  # identity scale into int8
    spec = Preprocess(out_w=int(rng.integers(1, 45)), out_h=int(rng.integers(1, 35)),
                      out_c=1 if seed % 4 == 3 else 3, dtype=dtype, rgb=bool(seed % 2),  # type: ignore[arg-type]
                      resize="area" if seed % 2 else "bilinear", roi=roi, letterbox=seed % 5 == 1,
                      pad_value=int(rng.integers(0, 256)), mul=mul, add=add)
    return _image(fmt, w, h, seed, padded=bool(seed % 2)), spec


@pytest.mark.parametrize("seed", range(120))
def test_reference_equals_independent_model_on_fixed_random_cases(seed: int) -> None:
    image, spec = _random_case(seed)
    got, info = ref.preprocess(image, spec)
    want, geometry = _model(image, spec)
    assert (info.content_w, info.content_h, info.offset_x, info.offset_y) == geometry
    assert got.dtype == want.dtype and np.array_equal(got, want), (seed, spec)


def test_edges_the_random_cases_miss() -> None:
    cases = [
        (_image("gray", 256, 1, 1), Preprocess(out_w=255, out_h=1, out_c=1, resize="area")),
        (_image("bgr", 100, 1, 2), Preprocess(out_w=10, out_h=10, letterbox=True, pad_value=9)),
        (_image("nv12", 24, 20, 3), Preprocess(out_w=30, out_h=25, roi=(4, 6, 12, 10))),
        (_image("nv12", 24, 20, 4), Preprocess(out_w=9, out_h=7, roi=(4, 6, 12, 10), resize="area")),
        (_image("yuyv", 20, 8, 5), Preprocess(out_w=9, out_h=21, roi=(2, 1, 14, 6))),
        (_image("gray", 8, 8, 6), Preprocess(out_w=8, out_h=8, dtype="int8")),
    ]
    for image, spec in cases:
        got, _ = ref.preprocess(image, spec)
        assert np.array_equal(got, _model(image, spec)[0]), spec


def test_colour_and_gray_constants_over_many_values() -> None:
    u, v = (a.ravel() for a in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    for y in (16, 81, 128, 235):
        yy = np.full_like(u, y)
        for got, want in zip(ref.yuv_to_rgb(yy, u, v), ind.yuv_to_rgb(yy, u, v), strict=True):
            assert np.array_equal(got, want), y
    bgr = np.random.default_rng(9).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    spec = Preprocess(out_w=256, out_h=256, out_c=1)  # same size: the identity, then gray
    got, _ = ref.preprocess(Image.packed("bgr", bgr), spec)
    assert np.array_equal(got, _model(Image.packed("bgr", bgr), spec)[0])


def test_motion_reports_the_eight_largest_regions_by_default() -> None:
    # Ten separate moving squares of 1..10 pixels a side: the default capacity (8, as the native
    # kernel's) keeps the eight largest, largest first.
    motion = ref.Motion(MotionState(80, 8))
    motion.update(np.zeros((8, 80), np.uint8))
    frame = np.zeros((8, 80), np.uint8)
    for side in range(1, 11):
        x = (side - 1) * 8
        frame[:side if side <= 7 else 7, x:x + min(side, 7)] = 255
    _, regions = motion.update(frame)
    pixels = [min(s, 7) * min(s, 7) for s in range(1, 11)]
    assert [r[4] for r in regions] == sorted(pixels, reverse=True)[:8]
