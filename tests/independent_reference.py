"""An independent model of ``lk_preprocess``, written from the formulas in docs/kernels.md.

It shares no code with the C kernels or ``agent/kernels/reference.py`` and is written a
different way on purpose, so a mistake in their common arithmetic shows up as a difference:

- geometry in exact rationals (``fractions.Fraction``): where each output pixel's centre or box
  lies in the source, with no float rounding of the scale;
- pixel sums in float64 (every product and sum below 2**53, so exact), rounded half up;
- the colour constants derived here from the published decimals (BT.601 limited range as
  OpenCV: 1.164, 1.596, 0.813, 0.391, 2.018 in Q20; BT.601 luma 0.299, 0.587, 0.114 in Q14);
- quantization as float32 arithmetic emulated in float64 (each result rounded to float32, which
  is exact for one product or sum of float32 operands), then round half to even, saturated.

What the formulas say, in words:

- ROI: a crop of the source in pixels. NV12 chroma rows and columns are those of the 2x2 blocks
  the ROI touches; YUYV ROIs start and end on whole pixel pairs.
- bilinear (OpenCV INTER_LINEAR geometry): output pixel i of n over a span of L source pixels
  has its centre at (i + 1/2) L / n; a sample centred at c is read at position c - 1/2 of its
  own grid. A subsampled chroma sample sits at the centre of the two luma pixels it covers, so
  in its grid the position is X / 2 - 1/2 for luma coordinate X. Positions outside the samples
  take the edge sample. The weight of the right (lower) sample is the fractional part rounded
  half up to 1/2048; the 2x2 sum is rounded half up to an integer once.
- area: output pixel i covers the box [i L / n, (i + 1) L / n) of the span (chroma: the box
  halved, in its grid), clipped to the samples. Each sample's weight is its overlap with the
  box rounded half up to 1/256 (at least 1/256); the weighted mean is rounded half up.
- colour: YUV planes are each resampled to integers, then converted
  (R = 1.164 (Y - 16) + 1.596 (V - 128) etc. in Q20 with Y - 16 floored at 0, rounded half up,
  clamped to 0..255). Gray output of a colour source is 0.299 R + 0.587 G + 0.114 B in Q14,
  rounded half up; of a YUV source it is the resampled Y.
- letterbox: scale = min(out_w / rw, out_h / rh); content = round half up of rw * scale and
  rh * scale (at least 1, at most the output), centred (offsets floored); the rest is pad_value.
- output: uint8 without mul/add is the pixel; otherwise x = float32(pixel * mul + add) and
  integer outputs take x rounded half to even, saturated to the type.
"""

from __future__ import annotations

from fractions import Fraction
from math import floor

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Q20 / Q14 fixed-point coefficients from the published decimals (OpenCV's YUV420sp->RGB).
Q20 = 1 << 20
CY, CVR, CVG, CUG, CUB = (round(c * Q20) for c in (1.164, 1.596, 0.813, 0.391, 2.018))
Q14 = 1 << 14
GRAY_R, GRAY_G, GRAY_B = (round(c * Q14) for c in (0.299, 0.587, 0.114))


def half_up(q: Fraction) -> int:
    """round(q) with ties towards +infinity, exact."""
    return floor(q + Fraction(1, 2))


def round_half_up(x: F64) -> F64:
    return np.floor(x + 0.5)


def round_half_even(x: F64) -> F64:
    low = np.floor(x)
    rest = x - low
    odd = np.mod(low, 2.0) == 1.0
    return low + ((rest > 0.5) | ((rest == 0.5) & odd))


def letterbox(rw: int, rh: int, out_w: int, out_h: int, on: bool) -> tuple[int, int, int, int]:
    """(content_w, content_h, offset_x, offset_y)."""
    if not on:
        return out_w, out_h, 0, 0
    scale = min(Fraction(out_w, rw), Fraction(out_h, rh))
    cw = min(max(half_up(rw * scale), 1), out_w)
    ch = min(max(half_up(rh * scale), 1), out_h)
    return cw, ch, (out_w - cw) // 2, (out_h - ch) // 2


def sample_position(i: int, n: int, start: int, span: int, sub: int, first: int) -> Fraction:
    """Position, in the sample grid, of output i's centre (span of luma pixels from start;
    sub = 2 for a half-resolution chroma grid whose first sample used is ``first``)."""
    centre = start + (i + Fraction(1, 2)) * Fraction(span, n)
    return centre / sub - Fraction(1, 2) - first


def bilinear_matrix(n: int, start: int, span: int, sub: int, first: int, count: int) -> F64:
    """(n, count) matrix of the 11-bit tap weights (in units of 1/2048)."""
    m = np.zeros((n, count), np.float64)
    for i in range(n):
        pos = sample_position(i, n, start, span, sub, first)
        left = floor(pos)
        if left < 0:
            m[i, 0] = 2048
        elif left >= count - 1:
            m[i, count - 1] = 2048
        else:
            w = half_up((pos - left) * 2048)
            m[i, left] += 2048 - w
            m[i, left + 1] += w
    return m


def area_matrix(n: int, start: int, span: int, sub: int, first: int, count: int) -> F64:
    """(n, count) matrix of box overlaps quantized to 1/256 (in units of 1/256)."""
    m = np.zeros((n, count), np.float64)
    for i in range(n):
        lo = max((start + i * Fraction(span, n)) / sub - first, Fraction(0))
        hi = min((start + (i + 1) * Fraction(span, n)) / sub - first, Fraction(count))
        for k in range(floor(lo), count):
            if k >= hi:
                break
            overlap = min(hi, Fraction(k + 1)) - max(lo, Fraction(k))
            m[i, k] = max(1, half_up(overlap * 256))
    return m


def resample(samples: F64, rows: F64, cols: F64, area: bool) -> I64:
    """One plane (float64 integers) through row and column weight matrices, rounded half up."""
    acc = rows @ samples @ cols.T  # integers below 2**53: exact
    if area:
        total = rows.sum(axis=1)[:, None] * cols.sum(axis=1)[None, :]
        out = (2 * acc.astype(np.int64) + total.astype(np.int64)) // (2 * total.astype(np.int64))
        return out.astype(np.int64)
    return round_half_up(acc / float(1 << 22)).astype(np.int64)


def yuv_to_rgb(y: I64, u: I64, v: I64) -> tuple[I64, I64, I64]:
    luma = np.maximum(y - 16, 0).astype(np.float64) * CY
    du, dv = (u - 128).astype(np.float64), (v - 128).astype(np.float64)

    def fin(q20: F64) -> I64:
        return np.clip(round_half_up(q20 / Q20), 0, 255).astype(np.int64)

    return fin(luma + CVR * dv), fin(luma - CVG * dv - CUG * du), fin(luma + CUB * du)


def quantize(values: I64, dtype: str, mul: float, add: float, identity: bool) -> npt.NDArray[np.generic]:
    if identity:
        return values.astype(np.uint8)
    # float32(float32(v) * mul) then + add, each rounded to float32 (via exact float64).
    prod = (values.astype(np.float64) * float(np.float32(mul))).astype(np.float32)
    x = (prod.astype(np.float64) + float(np.float32(add))).astype(np.float32)
    if dtype == "float32":
        return x
    q = round_half_even(x.astype(np.float64))
    lo, hi = (0, 255) if dtype == "uint8" else (-128, 127)
    return np.clip(q, lo, hi).astype(np.uint8 if dtype == "uint8" else np.int8)


def preprocess(fmt: str, planes: tuple[npt.NDArray[np.uint8], ...], width: int, height: int, *,
               out_w: int, out_h: int, out_c: int = 3, dtype: str = "uint8", rgb: bool = True,
               resize: str = "bilinear", roi: tuple[int, int, int, int] | None = None,
               letterbox_on: bool = False, pad_value: int = 0,
               mul: tuple[float, float, float] = (1.0, 1.0, 1.0),
               add: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[npt.NDArray[np.generic],
                                                                       tuple[int, int, int, int]]:
    """(out_h, out_w, out_c) tensor and (content_w, content_h, offset_x, offset_y)."""
    rx, ry, rw, rh = roi or (0, 0, width, height)
    cw, ch, ox, oy = letterbox(rw, rh, out_w, out_h, letterbox_on)
    area = resize == "area"
    build = area_matrix if area else bilinear_matrix

    def plane_of(samples: F64, sub_x: int, sub_y: int) -> I64:
        """Resample a grid of samples covering the ROI (sub = 2 where it is half resolution)."""
        fx = rx // sub_x if sub_x == 2 else rx
        fy = ry // sub_y if sub_y == 2 else ry
        rows = build(ch, ry, rh, sub_y, fy, samples.shape[0])
        cols = build(cw, rx, rw, sub_x, fx, samples.shape[1])
        return resample(samples, rows, cols, area)

    p0 = planes[0].astype(np.float64)
    if fmt == "nv12":
        luma = plane_of(p0[ry:ry + rh, rx:rx + rw], 1, 1)
        cy0, cy1, cx0, cx1 = ry // 2, (ry + rh - 1) // 2, rx // 2, (rx + rw - 1) // 2
        uv = planes[1].astype(np.float64)[cy0:cy1 + 1, 2 * cx0:2 * cx1 + 2]
        u, v = plane_of(uv[:, 0::2], 2, 2), plane_of(uv[:, 1::2], 2, 2)
        channels: tuple[I64, ...] = (luma, u, v)
    elif fmt == "yuyv":
        pairs = p0[ry:ry + rh, 2 * rx:2 * (rx + rw)]
        luma = plane_of(pairs[:, 0::2], 1, 1)
        channels = (luma, plane_of(pairs[:, 1::4], 2, 1), plane_of(pairs[:, 3::4], 2, 1))
    else:
        bpp = 1 if fmt == "gray" else 3
        px = p0[ry:ry + rh, bpp * rx:bpp * (rx + rw)]
        channels = tuple(plane_of(px[:, c::bpp], 1, 1) for c in range(bpp))

    if fmt in ("nv12", "yuyv"):
        r, g, b = yuv_to_rgb(*channels)
        gray = channels[0]
    elif fmt == "gray":
        r = g = b = gray = channels[0]
    else:
        r, g, b = channels if fmt == "rgb" else channels[::-1]
        weighted = GRAY_R * r + GRAY_G * g + GRAY_B * b
        gray = round_half_up(weighted.astype(np.float64) / Q14).astype(np.int64)

    identity = dtype == "uint8" and mul == (1.0, 1.0, 1.0) and add == (0.0, 0.0, 0.0)
    content = [gray] if out_c == 1 else ([r, g, b] if rgb else [b, g, r])
    out = np.empty((out_h, out_w, out_c), {"uint8": np.uint8, "int8": np.int8,
                                           "float32": np.float32}[dtype])
    for c in range(out_c):
        full = np.full((out_h, out_w), pad_value, np.int64)
        full[oy:oy + ch, ox:ox + cw] = content[c]
        out[..., c] = quantize(full, dtype, mul[c], add[c], identity)
    return out, (cw, ch, ox, oy)
