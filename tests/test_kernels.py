"""Native kernels against their numpy reference and an independent model of the formulas
(tests/independent_reference.py): known answers, hypothesis properties, bad input."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import KernelError
from agent.kernels import Image, MotionState, Preprocess
from agent.kernels import reference as ref
from tests import independent_reference as ind

native = pytest.importorskip("agent.kernels.native", reason="native kernels not built")
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def both(image: Image, spec: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    a, info_a = native.preprocess(image, spec)
    b, info_b = ref.preprocess(image, spec)
    assert (info_a.offset_x, info_a.offset_y, info_a.content_w, info_a.content_h) == (
        info_b.offset_x, info_b.offset_y, info_b.content_w, info_b.content_h)
    return a, b


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def make_image(fmt: str, w: int, h: int, rng: np.random.Generator, padded: bool) -> Image:
    extra = 7 if padded else 0
    if fmt == "nv12":
        cw, ch = (w + 1) // 2, (h + 1) // 2
        y = rng.integers(0, 256, (h, w + extra), dtype=np.uint8)[:, :w]
        uv = rng.integers(0, 256, (ch, 2 * cw + extra), dtype=np.uint8)[:, :2 * cw]
        return Image.nv12(y, uv)
    bpp = {"yuyv": 2, "bgr": 3, "rgb": 3, "gray": 1}[fmt]
    base = rng.integers(0, 256, (h, w + extra, bpp), dtype=np.uint8)[:, :w]
    return Image.packed(fmt, base[..., 0] if fmt == "gray" else base)  # type: ignore[arg-type]


@st.composite
def cases(draw: st.DrawFn) -> tuple[Image, Preprocess, int]:
    fmt = draw(st.sampled_from(["nv12", "yuyv", "bgr", "rgb", "gray"]))
    w = draw(st.integers(1, 90))
    h = draw(st.integers(1, 70))
    if fmt == "yuyv":
        w = max(2, w - w % 2)
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    image = make_image(fmt, w, h, rng, padded=draw(st.booleans()))
    roi = None
    if draw(st.booleans()):
        rx = draw(st.integers(0, w - 1))
        ry = draw(st.integers(0, h - 1))
        rw = draw(st.integers(1, w - rx))
        rh = draw(st.integers(1, h - ry))
        if fmt == "yuyv":
            rx -= rx % 2
            rw = max(2, rw - rw % 2)
            if rx + rw > w:
                rx = 0
        roi = (rx, ry, rw, rh)
    dtype = draw(st.sampled_from(["uint8", "int8", "float32"]))
    mul = (1.0, 1.0, 1.0) if dtype == "uint8" and draw(st.booleans()) else tuple(
        draw(st.floats(0.001, 2.0)) for _ in range(3))
    add = (0.0, 0.0, 0.0) if mul == (1.0, 1.0, 1.0) else tuple(
        draw(st.floats(-130.0, 130.0)) for _ in range(3))
    spec = Preprocess(out_w=draw(st.integers(1, 48)), out_h=draw(st.integers(1, 48)),
                      out_c=draw(st.sampled_from([1, 3])), dtype=dtype, rgb=draw(st.booleans()),
                      resize=draw(st.sampled_from(["bilinear", "area"])), roi=roi,
                      letterbox=draw(st.booleans()), pad_value=draw(st.integers(0, 255)),
                      mul=mul, add=add)  # type: ignore[arg-type]
    return image, spec, seed


def independent(image: Image, spec: Preprocess) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    return ind.preprocess(image.format, image.planes, image.width, image.height, out_w=spec.out_w,
                          out_h=spec.out_h, out_c=spec.out_c, dtype=spec.dtype, rgb=spec.rgb,
                          resize=spec.resize, roi=spec.roi, letterbox_on=spec.letterbox,
                          pad_value=spec.pad_value, mul=spec.mul, add=spec.add)


def assert_identical(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Same dtype, shape and values, bit for bit (float32 too): no LSB of tolerance."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if not np.array_equal(got, want):
        where = np.argwhere(got != want)
        y, x, c = where[0]
        raise AssertionError(f"{what}: {len(where)} elements differ, first at (y={y}, x={x}, c={c}): "
                             f"{got[y, x, c]!r} != {want[y, x, c]!r}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_preprocess_matches_reference(case: tuple[Image, Preprocess, int]) -> None:
    """The docs say exact: native, numpy reference and the independent model agree bit for bit."""
    image, spec, _ = case
    a, b = both(image, spec)
    want, geometry = independent(image, spec)
    _, info = native.preprocess(image, spec)
    assert (info.content_w, info.content_h, info.offset_x, info.offset_y) == geometry
    assert_identical(a, want, "native vs independent model")
    assert_identical(b, want, "reference.py vs independent model")


@pytest.mark.parametrize(("fmt", "size", "out", "resize", "roi"), [
    ("nv12", (1920, 1080), (300, 300), "bilinear", None),
    ("nv12", (1920, 1080), (300, 300), "area", None),
    ("nv12", (1920, 1080), (24, 20), "area", (3, 5, 1901, 1071)),  # uint64 sums, odd ROI
    ("yuyv", (1280, 720), (224, 224), "bilinear", (2, 1, 1270, 715)),
    ("yuyv", (1280, 720), (224, 224), "area", None),
    ("bgr", (960, 540), (256, 256), "bilinear", (1, 3, 955, 531)),
    ("bgr", (960, 540), (256, 256), "area", None),
])
def test_camera_sizes_match_independent_model(fmt: str, size: tuple[int, int], out: tuple[int, int],
                                              resize: str, roi: tuple[int, int, int, int] | None) -> None:
    image = make_image(fmt, size[0], size[1], np.random.default_rng(7), padded=True)
    for dtype, mul, add in (("uint8", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
                            ("int8", (1.0, 1.0, 1.0), (-128.0, -128.0, -128.0)),
                            ("float32", (1 / 127.5, 1 / 127.5, 1 / 127.5), (-1.0, -1.0, -1.0))):
        spec = Preprocess(out_w=out[0], out_h=out[1], dtype=dtype, resize=resize, roi=roi,  # type: ignore[arg-type]
                          mul=mul, add=add)
        got, _ = native.preprocess(image, spec)
        assert_identical(got, independent(image, spec)[0], f"{fmt} {resize} {dtype}")


def test_integer_outputs_round_half_to_even() -> None:
    """x = pixel * 0.5 lands on .5 for odd pixels: lrintf and np.rint go to the even neighbour
    (0.5 -> 0, 1.5 -> 2, 2.5 -> 2); floor or half-up would differ there."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for dtype, add in (("uint8", 0.0), ("int8", -64.0)):
        spec = Preprocess(out_w=16, out_h=16, out_c=1, dtype=dtype, mul=(0.5, 0.5, 0.5),  # type: ignore[arg-type]
                          add=(add, add, add))
        want = np.array([round(v / 2 + add) for v in range(256)]).reshape(16, 16)  # Python: half even
        for impl in (native, ref):
            got, _ = impl.preprocess(Image.packed("gray", ramp), spec)
            assert got[..., 0].astype(int).tolist() == want.tolist(), (impl.__name__, dtype)


def test_area_box_ending_on_a_pixel_boundary_takes_no_next_pixel() -> None:
    """40 rows to 24: output row 11 covers rows [18.33, 20). In doubles 12 * (40/24) is
    20.000000000000004, which used to pull in row 20 with the minimum weight (1/256)."""
    column = np.zeros((40, 1), np.uint8)
    column[20] = 255
    spec = Preprocess(out_w=1, out_h=24, out_c=1, resize="area")
    for impl in (native, ref):
        got, _ = impl.preprocess(Image.packed("gray", column), spec)
        assert got[11, 0, 0] == 0 and got[12, 0, 0] == 153, impl.__name__  # 255 * 256 / (256 + 171)


def test_letterbox_size_ties_round_half_up() -> None:
    """85 rows at scale 7/10 are 59.5 rows: 60 (in doubles 85 * 0.7 is 59.49999999999999)."""
    spec = Preprocess(out_w=7, out_h=61, out_c=1, letterbox=True)
    image = Image.packed("gray", np.zeros((85, 10), np.uint8))
    for impl in (native, ref):
        _, info = impl.preprocess(image, spec)
        assert (info.content_w, info.content_h, info.offset_x, info.offset_y) == (7, 60, 0, 0)


def test_yuv_to_rgb_over_every_chroma_pair() -> None:
    """Every (U, V) with a spread of Y: the native conversion equals the independent Q20 model,
    and that model is BT.601 (OpenCV's decimals) rounded half up, except where the exact value is
    within 1e-3 of a .5 tie (the Q20 constants are the decimals rounded to 2**-20)."""
    ys = np.array([0, 15, 16, 17, 40, 81, 128, 200, 234, 235, 236, 255])
    u, v = (a.ravel() for a in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    # An NV12 frame of constant 2x2 blocks, halved by area: each output pixel is one block.
    n = u.size
    yy = np.repeat(ys, n)
    uu, vv = np.tile(u, len(ys)), np.tile(v, len(ys))
    side = 256
    rows = yy.size // side
    y_plane = np.repeat(np.repeat(yy.reshape(rows, side), 2, axis=0), 2, axis=1).astype(np.uint8)
    uv_plane = np.stack([uu, vv], axis=1).reshape(rows, 2 * side).astype(np.uint8)
    got, _ = native.preprocess(Image.nv12(y_plane, uv_plane),
                               Preprocess(out_w=side, out_h=rows, resize="area"))
    r, g, b = ind.yuv_to_rgb(yy.astype(np.int64), uu.astype(np.int64), vv.astype(np.int64))
    want = np.stack([r, g, b], axis=1).reshape(rows, side, 3).astype(np.uint8)
    assert_identical(got, want, "native YUV->RGB vs independent Q20 model")
    dy, du, dv = np.maximum(yy - 16, 0).astype(float), uu - 128.0, vv - 128.0
    ideal = np.stack([1.164 * dy + 1.596 * dv, 1.164 * dy - 0.813 * dv - 0.391 * du,
                      1.164 * dy + 2.018 * du], axis=1)
    rounded = np.clip(np.floor(ideal + 0.5), 0, 255)
    ours = np.stack([r, g, b], axis=1)
    near_tie = np.abs(ideal - np.floor(ideal) - 0.5) < 1e-3
    assert (np.abs(ours - rounded) <= 1).all()
    assert (ours == rounded)[~near_tie].all()


def test_gray_weights_are_bt601_luma() -> None:
    """BGR to one channel: 0.299 R + 0.587 G + 0.114 B rounded half up (Q14 as OpenCV)."""
    rng = np.random.default_rng(11)
    bgr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    got, _ = native.preprocess(Image.packed("bgr", bgr), Preprocess(out_w=64, out_h=64, out_c=1))
    b, g, r = (bgr[..., c].astype(float) for c in range(3))
    ideal = 0.299 * r + 0.587 * g + 0.114 * b
    assert np.abs(got[..., 0] - np.floor(ideal + 0.5)).max() <= 1
    assert_identical(got, ind.preprocess("bgr", (bgr.reshape(64, -1),), 64, 64, out_w=64, out_h=64,
                                         out_c=1)[0], "gray")


@SETTINGS
@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 24), st.integers(1, 24),
       st.integers(0, 2**31))
def test_area_is_exact_on_integer_ratios(kx: int, ky: int, ow: int, oh: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (oh * ky, ow * kx, 3), dtype=np.uint8)
    spec = Preprocess(out_w=ow, out_h=oh, resize="area", rgb=False)
    a, b = both(Image.packed("bgr", img), spec)
    assert diff(a, b) == 0
    mean = img.reshape(oh, ky, ow, kx, 3).astype(np.float64).mean(axis=(1, 3))
    assert diff(a, np.floor(mean + 0.5)) == 0  # exact average, ties up


@SETTINGS
@given(st.integers(2, 80), st.integers(2, 60), st.integers(1, 50), st.integers(1, 50),
       st.integers(0, 2**31))
def test_bgr_bilinear_within_one_lsb_of_opencv(w: int, h: int, ow: int, oh: int, seed: int) -> None:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    a, _ = native.preprocess(Image.packed("bgr", img), Preprocess(out_w=ow, out_h=oh, rgb=False))
    assert diff(a, cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR)) <= 1


def test_known_answers() -> None:
    ramp = np.tile(np.arange(8, dtype=np.uint8) * 10, (4, 1))
    same, _ = native.preprocess(Image.packed("gray", ramp), Preprocess(out_w=8, out_h=4, out_c=1))
    assert np.array_equal(same[..., 0], ramp)  # same size: bilinear is the identity
    one, _ = native.preprocess(Image.packed("gray", ramp),
                               Preprocess(out_w=1, out_h=1, out_c=1, resize="area"))
    assert one[0, 0, 0] == 35  # mean of 0..70
    gray = np.full((4, 4), 128, np.uint8)
    uv = np.full((2, 4), 128, np.uint8)
    rgb, _ = native.preprocess(Image.nv12(gray, uv), Preprocess(out_w=2, out_h=2))
    expected = ((128 - 16) * 1220542 + (1 << 19)) >> 20
    assert (rgb == expected).all() and expected == 130
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 2] = 200  # red
    out, _ = native.preprocess(Image.packed("bgr", bgr), Preprocess(out_w=2, out_h=2, rgb=True))
    assert out[0, 0].tolist() == [200, 0, 0]
    q, _ = native.preprocess(Image.packed("bgr", bgr), Preprocess(
        out_w=1, out_h=1, dtype="int8", add=(-128.0, -128.0, -128.0)))
    assert q[0, 0].tolist() == [72, -128, -128]


def test_letterbox_geometry_and_padding() -> None:
    img = np.full((100, 200, 3), 255, np.uint8)
    out, info = native.preprocess(Image.packed("bgr", img),
                                  Preprocess(out_w=64, out_h=64, letterbox=True, pad_value=114))
    assert (info.content_w, info.content_h, info.offset_x, info.offset_y) == (64, 32, 0, 16)
    assert (out[:16] == 114).all() and (out[48:] == 114).all() and (out[16:48] == 255).all()
    assert info.scale == pytest.approx(0.32)


def test_huge_ratio_and_single_pixels() -> None:
    big = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    for resize in ("bilinear", "area"):
        spec = Preprocess(out_w=1, out_h=1, resize=resize)  # type: ignore[arg-type]
        a, b = both(Image.packed("bgr", big), spec)
        assert_identical(a, b, resize)
        assert_identical(a, independent(Image.packed("bgr", big), spec)[0], resize)
    px = np.array([[[1, 2, 3]]], np.uint8)
    a, b = both(Image.packed("rgb", px), Preprocess(out_w=33, out_h=17))
    assert diff(a, b) == 0 and (a == [1, 2, 3]).all()


def test_writes_into_caller_buffer_zero_copy() -> None:
    img = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    tensor = np.zeros((1, 16, 16, 3), np.uint8)
    out, _ = native.preprocess(Image.packed("bgr", img), Preprocess(out_w=16, out_h=16), tensor)
    assert out is tensor and tensor.any()


@pytest.mark.parametrize("build", [
    lambda img: native.preprocess(img, Preprocess(out_w=0, out_h=4)),
    lambda img: native.preprocess(img, Preprocess(out_w=20000, out_h=4)),
    lambda img: native.preprocess(img, Preprocess(out_w=4, out_h=4, roi=(30, 0, 20, 5))),
    lambda img: native.preprocess(img, Preprocess(out_w=4, out_h=4, roi=(-1, 0, 2, 2))),
    lambda img: native.preprocess(img, Preprocess(out_w=4, out_h=4), np.zeros((4, 4, 3), np.float32)),
    lambda img: native.preprocess(img, Preprocess(out_w=4, out_h=4), np.zeros((3, 4, 3), np.uint8)),
    lambda img: native.preprocess(img, Preprocess(out_w=4, out_h=4, pad_value=300)),
])
def test_bad_arguments_raise_typed_errors(build) -> None:  # type: ignore[no-untyped-def]
    img = Image.packed("bgr", np.zeros((10, 40, 3), np.uint8))
    with pytest.raises(KernelError):
        build(img)


def test_bad_planes_raise() -> None:
    y = np.zeros((8, 8), np.uint8)
    with pytest.raises(KernelError, match="range"):
        native.preprocess(Image.nv12(y, np.zeros((2, 8), np.uint8)), Preprocess(out_w=2, out_h=2))
    with pytest.raises(KernelError):
        native.preprocess(Image("bgr", 10, 10, (np.zeros((10, 12), np.uint8),)),
                          Preprocess(out_w=2, out_h=2))
    with pytest.raises(KernelError, match="invalid argument"):  # odd YUYV region
        native.preprocess(Image.packed("yuyv", np.zeros((4, 8, 2), np.uint8)),
                          Preprocess(out_w=2, out_h=2, roi=(1, 0, 4, 4)))
    with pytest.raises(ValueError, match="contiguous"):
        Image.packed("bgr", np.zeros((4, 8, 3), np.uint8)[:, ::2])


@st.composite
def box_sets(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    a = rng.random((n, 2), dtype=np.float32)
    b = a + rng.random((n, 2), dtype=np.float32) * 0.4
    boxes = np.concatenate([a, b], axis=1).astype(np.float32)
    scores = np.round(rng.random(n, dtype=np.float32), draw(st.integers(1, 3))).astype(np.float32)
    if n and draw(st.booleans()):
        scores[rng.integers(0, n)] = np.nan
    return boxes, scores, rng.integers(0, 3, n).astype(np.int32)


@SETTINGS
@given(box_sets(), st.floats(0.0, 1.0), st.integers(0, 80))
def test_nms_identical_sets(data: tuple[np.ndarray, np.ndarray, np.ndarray], iou: float,
                            max_out: int) -> None:
    boxes, scores, classes = data
    assert native.nms(boxes, scores, classes, iou, max_out) == ref.nms(boxes, scores, classes, iou,
                                                                       max_out)


@SETTINGS
@given(box_sets(), st.integers(0, 10))
def test_topk_matches(data: tuple[np.ndarray, np.ndarray, np.ndarray], k: int) -> None:
    scores = np.nan_to_num(data[1], nan=0.0)
    k = min(k, len(scores))
    assert native.topk(scores, k) == ref.topk(scores, k)


def test_dequantize_ssd_and_yolo_match_reference() -> None:
    rng = np.random.default_rng(5)
    q = rng.integers(0, 256, 1000, dtype=np.uint8)
    assert np.array_equal(native.dequantize(q, 0.02, 128), ref.dequantize(q, 0.02, 128))
    qs = rng.integers(-128, 128, 1000).astype(np.int8)
    assert np.array_equal(native.dequantize(qs, 0.1, -3), ref.dequantize(qs, 0.1, -3))
    enc = rng.normal(size=(500, 4)).astype(np.float32)
    anchors = np.concatenate([rng.random((500, 2)), rng.random((500, 2)) * 0.3 + 0.01],
                             axis=1).astype(np.float32)
    assert np.allclose(native.ssd_decode(enc, anchors), ref.ssd_decode(enc, anchors, (10, 10, 5, 5)),
                       atol=1e-6)
    rows = rng.random((300, 4 + 1 + 3)).astype(np.float32) * [640, 480, 100, 100, 1, 1, 1, 1]
    for has_obj in (True, False):
        a = native.yolo_decode(rows.astype(np.float32), has_obj, 0.4, 640, 480)
        b = ref.yolo_decode(rows.astype(np.float32), has_obj, 0.4, 640, 480)
        for x, y in zip(a, b, strict=False):
            assert np.array_equal(x, y)
    with pytest.raises(KernelError):
        native.ssd_decode(enc, anchors[:10])
    with pytest.raises(KernelError):
        native.dequantize(np.zeros(3, np.float32), 1.0, 0)  # type: ignore[arg-type]


def test_motion_matches_reference_and_finds_the_mover() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(40, 60, (45, 80), dtype=np.uint8)
    nat = native.Motion(MotionState(80, 45))
    refs = MotionState(80, 45)
    for step in range(12):
        frame = base.copy()
        x = 5 + 5 * step
        frame[10:20, x:x + 8] = 220
        a = nat.update(frame)
        b = ref.motion_update(refs, frame)
        assert a[0] == pytest.approx(b[0]) and a[1] == b[1]
        if step:
            assert a[0] > 0 and any(b[0] <= x + 7 and b[2] >= x for b in a[1])
    static = native.Motion(MotionState(80, 45))
    static.update(base)
    assert static.update(base) == (0.0, [])


def test_variant_follows_target_not_host(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("build_ffi", ROOT / "native" / "build_ffi.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.choose_variant("linux-aarch64", None) == "neon"
    assert mod.choose_variant("linux-x86_64", None) == "ref"
    assert mod.choose_variant("macosx-14-arm64", "auto") == "neon"
    assert mod.choose_variant("linux-aarch64", "ref") == "ref"
    assert mod.choose_variant("linux-x86_64", "cuda") == "cuda"
    with pytest.raises(ValueError, match="aarch64"):
        mod.choose_variant("linux-x86_64", "neon")
    with pytest.raises(ValueError, match="use one of"):
        mod.choose_variant("linux-x86_64", "avx9000")


def test_numpy_fallback_when_forced() -> None:
    out = subprocess.run([sys.executable, "-c", "from agent import kernels; print(kernels.variant())"],
                         capture_output=True, text=True, env={**os.environ, "LEPTON_KERNELS": "numpy"},
                         cwd=ROOT)
    assert out.stdout.strip() == "numpy"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernels_and_bench_build_for_orin(tmp_path: Path) -> None:
    """The CUDA kernel and its GPU bench/check program compile and link for sm_87."""
    out = subprocess.run(["make", "-s", "-f", "native/tests/cuda.mk", "CUDA_ARCH=sm_87",
                          f"OUT={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bench").exists()
