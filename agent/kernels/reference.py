"""numpy reference of every native kernel: the executable specification of their results.

The native kernels must match these exactly, and both must match the independent model in
tests/independent_reference.py (written from the formulas, sharing no code).
They are also the fallback when the native module is missing, so the board still boots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from agent.core.heads import YoloLayout

Format = Literal["nv12", "yuyv", "bgr", "rgb", "gray"]
Resize = Literal["bilinear", "area"]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
BYTES_PER_PIXEL = {"nv12": 1, "yuyv": 2, "bgr": 3, "rgb": 3, "gray": 1}


@dataclass(frozen=True)
class Image:
    """A frame in one of the supported layouts. ``planes`` are 2-D uint8 views (rows, bytes)."""

    format: Format
    width: int
    height: int
    planes: tuple[U8, ...]

    @classmethod
    def packed(cls, fmt: Format, array: U8) -> Image:
        """BGR/RGB (H, W, 3), GRAY (H, W), YUYV (H, W, 2) or (H, 2W)."""
        if fmt == "gray":
            if array.ndim != 2:
                raise ValueError(f"gray image must be (H, W), got {array.shape}")
            return cls(fmt, array.shape[1], array.shape[0], (array,))
        bpp = BYTES_PER_PIXEL[fmt]
        if array.ndim == 3:
            if array.shape[2] != bpp:
                raise ValueError(f"{fmt} image must be (H, W, {bpp}), got {array.shape}")
            width = array.shape[1]
            rows = array.reshape(array.shape[0], -1) if array.flags.c_contiguous else None
            if rows is None:
                if array.strides[2] != 1 or array.strides[1] != bpp:
                    raise ValueError(f"{fmt} pixels must be contiguous (strides {array.strides})")
                rows = np.lib.stride_tricks.as_strided(
                    array, shape=(array.shape[0], width * bpp), strides=(array.strides[0], 1))
        elif array.ndim == 2 and fmt == "yuyv":
            width, rows = array.shape[1] // 2, array
        else:
            raise ValueError(f"{fmt} image must be (H, W, {bpp}), got {array.shape}")
        return cls(fmt, width, array.shape[0], (rows,))

    @classmethod
    def nv12(cls, y: U8, uv: U8) -> Image:
        """NV12 from its Y plane (H, W) and interleaved UV plane (ceil(H/2), 2*ceil(W/2))."""
        if y.ndim != 2 or uv.ndim != 2:
            raise ValueError("nv12 planes must be 2-D (rows, bytes)")
        return cls("nv12", y.shape[1], y.shape[0], (y, uv))

    @classmethod
    def nv12_buffer(cls, buf: U8, width: int, height: int) -> Image:
        """NV12 in one (H * 3/2, W) buffer, as V4L2 and decoders hand it out (even sizes)."""
        if width % 2 or height % 2 or buf.shape != (height * 3 // 2, width):
            raise ValueError(f"nv12 buffer must be ({height * 3 // 2}, {width}) with even sizes")
        return cls.nv12(buf[:height], buf[height:])


@dataclass(frozen=True)
class LetterboxInfo:
    scale: float
    offset_x: int
    offset_y: int
    content_w: int
    content_h: int


@dataclass(frozen=True)
class Preprocess:
    """What to make of a frame; ``mul``/``add`` map a pixel to the tensor value per channel."""

    out_w: int
    out_h: int
    out_c: int = 3
    dtype: Literal["uint8", "int8", "float32"] = "uint8"
    rgb: bool = True
    resize: Resize = "bilinear"
    roi: tuple[int, int, int, int] | None = None
    letterbox: bool = False
    pad_value: int = 0
    mul: tuple[float, float, float] = (1.0, 1.0, 1.0)
    add: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def geometry(self, image: Image) -> tuple[tuple[int, int, int, int], LetterboxInfo]:
        rx, ry, rw, rh = self.roi or (0, 0, image.width, image.height)
        if self.letterbox:
            # scale = min(out_w / rw, out_h / rh) = num / den; sizes rounded half up, exactly
            num, den = (self.out_w, rw) if self.out_w * rh <= self.out_h * rw else (self.out_h, rh)
            cw = min(max((2 * rw * num + den) // (2 * den), 1), self.out_w)
            ch = min(max((2 * rh * num + den) // (2 * den), 1), self.out_h)
            ox, oy = (self.out_w - cw) // 2, (self.out_h - ch) // 2
        else:
            cw, ch, ox, oy = self.out_w, self.out_h, 0, 0
        info = LetterboxInfo(float(np.float32(cw) / np.float32(rw)), ox, oy, cw, ch)
        return (rx, ry, rw, rh), info


def linear_taps(n: int, scale: float, offset: F64 | float, lo: int, hi: int) -> tuple[I64, I64, I64]:
    i = np.arange(n, dtype=np.float64)
    f = (i + 0.5) * scale - 0.5 + offset
    s = np.floor(f)
    frac = f - s
    s = s.astype(np.int64)
    low, high = s < lo, s >= hi
    s = np.where(low, lo, np.where(high, hi, s))
    frac = np.where(low | high, 0.0, frac)
    i1 = np.where(s < hi, s + 1, s)
    return s, i1, np.floor(frac * 2048.0 + 0.5).astype(np.int64)


def area_weights(n: int, num0: int, step: int, den: int, lo: int, hi: int, size: int) -> F64:
    """Dense (n, size) matrix of 8-bit fixed-point box weights, as the C taps: output i covers
    [(num0 + i*step) / den, (num0 + (i+1)*step) / den), in exact integers (a float box that ends
    on a pixel boundary can overshoot it and pick up a pixel it does not cover)."""
    i = np.arange(n, dtype=np.int64)
    b0 = np.maximum(num0 + i * step, lo * den)
    b1 = np.minimum(num0 + (i + 1) * step, hi * den)
    s = b0 // den
    e = -(-b1 // den)
    e = np.where(e <= s, s + 1, e)
    over = e > hi
    e = np.where(over, hi, e)
    s = np.where(over & (s >= e), e - 1, s)

    def w256(q: I64 | int) -> int:
        return max(1, int((2 * 256 * q + den) // (2 * den)))

    weights = np.zeros((n, size), np.float64)
    for k in range(n):
        if e[k] - s[k] == 1:
            weights[k, s[k]] = w256(b1[k] - b0[k])
            continue
        weights[k, s[k]:e[k]] = 256.0
        weights[k, s[k]] = w256((s[k] + 1) * den - b0[k])
        weights[k, e[k] - 1] = w256(b1[k] - (e[k] - 1) * den)
    return weights


def _row_taps(n: int, scale: float, base: float, divisor: float, hi: int) -> tuple[I64, I64, I64]:
    """Vertical taps computed one row at a time, exactly as the C code does (offset
    ``base + r * full_scale / divisor`` for output row r)."""
    full = scale * divisor
    taps = [linear_taps(1, scale, base + (r * full) / divisor if divisor != 1.0 else float(r * full),
                        0, hi) for r in range(n)]
    return (np.concatenate([t[0] for t in taps]), np.concatenate([t[1] for t in taps]),
            np.concatenate([t[2] for t in taps]))


def _shift(taps: tuple[I64, I64, I64], step: int, channel: int) -> tuple[I64, I64, I64]:
    return taps[0] * step + channel, taps[1] * step + channel, taps[2]


def _bilinear(plane: U8, rows: tuple[I64, I64, I64], cols: tuple[I64, I64, I64]) -> I64:
    r0, r1, wr = rows
    c0, c1, wc = cols
    p = plane.astype(np.int64)
    blended: I64 = p[r0] * (2048 - wr)[:, None] + p[r1] * wr[:, None]
    summed: I64 = blended[:, c0] * (2048 - wc) + blended[:, c1] * wc + (1 << 21)
    out: I64 = np.right_shift(summed, 22)
    return out


def _area(plane: U8, wrows: F64, wcols: F64) -> I64:
    acc = wrows @ plane.astype(np.float64) @ wcols.T
    total = wrows.sum(axis=1)[:, None] * wcols.sum(axis=1)[None, :]
    out: I64 = ((acc + np.floor(total / 2)) // total).astype(np.int64)
    return out


def yuv_to_rgb(y: I64, u: I64, v: I64) -> tuple[I64, I64, I64]:
    yy = np.maximum(y - 16, 0) * 1220542 + (1 << 19)
    uu, vv = u - 128, v - 128
    r = np.clip((yy + 1673527 * vv) >> 20, 0, 255)
    g = np.clip((yy - 852492 * vv - 409993 * uu) >> 20, 0, 255)
    b = np.clip((yy + 2116026 * uu) >> 20, 0, 255)
    return r, g, b


def _quantize(values: I64, spec: Preprocess, channel: int) -> npt.NDArray[Any]:
    if spec.dtype == "uint8" and spec.mul == (1.0, 1.0, 1.0) and spec.add == (0.0, 0.0, 0.0):
        return values.astype(np.uint8)
    x: F32 = values.astype(np.float32) * np.float32(spec.mul[channel]) + np.float32(spec.add[channel])
    if spec.dtype == "float32":
        return x
    q = np.rint(x)
    if spec.dtype == "uint8":
        return np.clip(q, 0, 255).astype(np.uint8)
    return np.clip(q, -128, 127).astype(np.int8)


def preprocess(image: Image, spec: Preprocess) -> tuple[npt.NDArray[np.generic], LetterboxInfo]:
    """The reference of ``lk_preprocess``: returns (out_h, out_w, out_c) and the geometry."""
    (rx, ry, rw, rh), info = spec.geometry(image)
    cw, ch = info.content_w, info.content_h
    sx, sy = rw / cw, rh / ch
    fmt = image.format
    bpp = BYTES_PER_PIXEL[fmt]
    plane = image.planes[0][ry:ry + rh, rx * bpp:(rx + rw) * bpp]
    step = 2 if fmt == "yuyv" else bpp
    nch = 1 if fmt in ("nv12", "yuyv") else bpp

    def luma_or_packed(c: int) -> I64:
        if spec.resize == "area":
            wr = np.vstack([area_weights(1, r * rh, rh, ch, 0, rh, rh) for r in range(ch)])
            wc_pix = area_weights(cw, 0, rw, cw, 0, rw, rw)
            wc = np.zeros((cw, plane.shape[1]), np.float64)
            wc[:, c::step][:, :rw] = wc_pix
            return _area(plane, wr, wc)
        return _bilinear(plane, _row_taps(ch, sy, 0.0, 1.0, rh - 1),
                         _shift(linear_taps(cw, sx, 0.0, 0, rw - 1), step, c))

    channels = [luma_or_packed(c) for c in range(nch)]
    have_rgb = False
    if fmt in ("nv12", "yuyv") and spec.out_c == 3:
        if fmt == "nv12":
            cx0, cx1 = rx // 2, (rx + rw - 1) // 2
            cy0, cy1 = ry // 2, (ry + rh - 1) // 2
            cplane = image.planes[1][cy0:cy1 + 1, cx0 * 2:(cx1 + 1) * 2]
            ncols, cstep, ub, vb = cx1 - cx0 + 1, 2, 0, 1
            offset = rx / 2.0 - cx0
        else:
            cplane, ncols, cstep, ub, vb, offset = plane, (rw + 1) // 2, 4, 1, 3, rx / 2.0 - rx // 2
        nrows = cplane.shape[0]
        if spec.resize == "area":
            if fmt == "nv12":
                wr = np.vstack([area_weights(1, (ry - 2 * cy0) * ch + r * rh, rh, 2 * ch, 0, nrows,
                                             nrows) for r in range(ch)])
            else:
                wr = np.vstack([area_weights(1, r * rh, rh, ch, 0, rh, rh) for r in range(ch)])
            first = cx0 if fmt == "nv12" else rx // 2
            wpix = area_weights(cw, (rx - 2 * first) * cw, rw, 2 * cw, 0, ncols, ncols)
            wu = np.zeros((cw, cplane.shape[1]), np.float64)
            wv = np.zeros((cw, cplane.shape[1]), np.float64)
            wu[:, ub::cstep][:, :ncols] = wpix
            wv[:, vb::cstep][:, :ncols] = wpix
            u, v = _area(cplane, wr, wu), _area(cplane, wr, wv)
        else:
            rows = (_row_taps(ch, sy / 2.0, ry / 2.0 - cy0, 2.0, nrows - 1) if fmt == "nv12"
                    else _row_taps(ch, sy, 0.0, 1.0, rh - 1))
            cols = linear_taps(cw, sx / 2.0, offset, 0, ncols - 1)
            u = _bilinear(cplane, rows, _shift(cols, cstep, ub))
            v = _bilinear(cplane, rows, _shift(cols, cstep, vb))
        r, g, b = yuv_to_rgb(channels[0], u, v)
        have_rgb = True
    elif nch == 3:
        if fmt == "bgr":
            b, g, r = channels
        else:
            r, g, b = channels
        have_rgb = True
    gray_src = channels[0]

    out_dtype = {"uint8": np.uint8, "int8": np.int8, "float32": np.float32}[spec.dtype]
    out = np.empty((spec.out_h, spec.out_w, spec.out_c), out_dtype)
    pad = np.full((1,), spec.pad_value, np.int64)
    for c in range(spec.out_c):
        out[..., c] = _quantize(pad, spec, c)[0]
    region = out[info.offset_y:info.offset_y + ch, info.offset_x:info.offset_x + cw]
    if spec.out_c == 1:
        gray = (b * 1868 + g * 9617 + r * 4899 + 8192) >> 14 if have_rgb and fmt not in (
            "nv12", "yuyv") else gray_src
        region[..., 0] = _quantize(gray, spec, 0)
    elif not have_rgb:
        for c in range(3):
            region[..., c] = _quantize(gray_src, spec, c)
    else:
        order = (r, g, b) if spec.rgb else (b, g, r)
        for c in range(3):
            region[..., c] = _quantize(order[c], spec, c)
    return out, info


def dequantize(q: npt.NDArray[np.integer], scale: float, zero_point: int) -> F32:
    out: F32 = ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
    return out


def ssd_decode(encodings: F32, anchors: F32, scales: tuple[float, float, float, float]) -> F32:
    e, a = encodings.astype(np.float32), anchors.astype(np.float32)
    s = np.asarray(scales, np.float32)
    yc = e[:, 0] / s[0] * a[:, 2] + a[:, 0]
    xc = e[:, 1] / s[1] * a[:, 3] + a[:, 1]
    h = np.exp(e[:, 2] / s[2]) * a[:, 2]
    w = np.exp(e[:, 3] / s[3]) * a[:, 3]
    half = np.float32(0.5)
    return np.stack([yc - h * half, xc - w * half, yc + h * half, xc + w * half], axis=1)


def yolo_decode(rows: F32, has_objectness: bool, threshold: float, input_w: float,
                input_h: float) -> tuple[F32, F32, npt.NDArray[np.int32]]:
    first = 5 if has_objectness else 4
    cls = rows[:, first:]
    best = np.argmax(cls, axis=1).astype(np.int32)
    best_score = cls[np.arange(len(rows)), best]
    conf = rows[:, 4] * best_score if has_objectness else best_score
    keep = conf >= np.float32(threshold)
    r = rows[keep]
    iw, ih = np.float32(input_w), np.float32(input_h)
    cx, cy = r[:, 0] / iw, r[:, 1] / ih
    hw, hh = r[:, 2] / iw * np.float32(0.5), r[:, 3] / ih * np.float32(0.5)
    boxes = np.stack([cy - hh, cx - hw, cy + hh, cx + hw], axis=1).astype(np.float32)
    return boxes, conf[keep].astype(np.float32), best[keep]


def yolo_head(raw: npt.NDArray[Any], layout: YoloLayout, scale: float, zero_point: int,
              threshold: float, norm_w: float, norm_h: float,
              ) -> tuple[F32, F32, npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    from agent.core.heads import yolo_candidates

    return yolo_candidates(raw, layout, scale, zero_point, threshold, norm_w, norm_h)


def order_by_score(scores: F32) -> I64:
    """Indices by score, best first, ties by index; NaN scores left out."""
    idx = np.flatnonzero(~np.isnan(scores))
    out: I64 = idx[np.lexsort((idx, -scores[idx]))].astype(np.int64)
    return out


def nms(boxes: F32, scores: F32, classes: npt.NDArray[np.int32], iou_threshold: float,
        max_out: int) -> list[int]:
    from agent.core.postprocess import nms as core_nms

    return core_nms(boxes, scores, classes, iou_threshold, max_out)


def topk(scores: F32, k: int) -> list[int]:
    return [int(i) for i in order_by_score(scores)[:k]]


@dataclass
class MotionState:
    width: int
    height: int
    alpha_q8: int = 13
    threshold: int = 25
    background: npt.NDArray[np.uint16] | None = None


class Motion:
    """Same face as the native ``Motion``: ``update(gray) -> (score, boxes)``."""

    def __init__(self, state: MotionState) -> None:
        self.state = state

    def update(self, gray: U8, capacity: int = 8) -> tuple[float, list[tuple[int, ...]]]:
        return motion_update(self.state, gray, capacity)


def motion_update(state: MotionState, gray: U8, capacity: int = 8) -> tuple[float, list[tuple[int, ...]]]:
    """Reference of ``lk_motion_update``: (score, [(x0, y0, x1, y1, pixels), ...])."""
    cur = gray.astype(np.int64) << 8
    if state.background is None:
        state.background = cur.astype(np.uint16)
        return 0.0, []
    back = state.background.astype(np.int64)
    diff = np.abs(cur - back) >> 8
    mask = diff > state.threshold
    delta = (cur - back) * state.alpha_q8
    state.background = (back + np.sign(delta) * (np.abs(delta) // 256)).astype(np.uint16)
    score = float(np.float32(mask.sum()) / np.float32(mask.size))
    if capacity == 0 or not mask.any():
        return score, []
    seen = np.zeros_like(mask)
    regions: list[tuple[int, ...]] = []
    h, w = mask.shape
    for seed in np.flatnonzero(mask):
        sy, sx = divmod(int(seed), w)
        if seen[sy, sx]:
            continue
        seen[sy, sx] = True
        stack = [(sy, sx)]
        x0 = x1 = sx
        y0 = y1 = sy
        pixels = 0
        while stack:
            y, x = stack.pop()
            pixels += 1
            x0, x1, y0, y1 = min(x0, x), max(x1, x), min(y0, y), max(y1, y)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        regions.append((x0, y0, x1, y1, pixels))
    regions.sort(key=lambda r: -r[4])  # stable: earlier seeds first among equals
    return score, regions[:capacity]
