"""Thin typed wrappers over the C entry points: check arguments, call, turn codes into errors.

Each function mirrors one ``lk_*`` function and its numpy reference in ``reference.py``.
cffi releases the GIL for the duration of every call.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.core.heads import YoloLayout
from agent.errors import KernelError
from agent.kernels import _native  # type: ignore[attr-defined]  # built by native/build_ffi.py
from agent.kernels.reference import (
    BYTES_PER_PIXEL,
    F32,
    Image,
    LetterboxInfo,
    MotionState,
    Preprocess,
)

ffi: Any = _native.ffi
lib: Any = _native.lib
log = logging.getLogger("agent.kernels")

# Every enum value comes from the headers (the cdef is generated from them, values left to the
# compiler), never a number written here.
_CODES = {lib.LK_EINVAL: "invalid argument", lib.LK_ERANGE: "size, stride or region out of range",
          lib.LK_ENOMEM: "out of memory", lib.LK_EOVERFLOW: "dimensions overflow",
          lib.LK_ENOTSUP: "not supported by this implementation", lib.LK_EDEVICE: "GPU error"}
_FORMATS = {"nv12": lib.LK_FMT_NV12, "yuyv": lib.LK_FMT_YUYV, "bgr": lib.LK_FMT_BGR,
            "rgb": lib.LK_FMT_RGB, "gray": lib.LK_FMT_GRAY}
_DTYPES = {"uint8": (lib.LK_OUT_UINT8, np.uint8), "int8": (lib.LK_OUT_INT8, np.int8),
           "float32": (lib.LK_OUT_FLOAT32, np.float32)}
_RESIZE = {"bilinear": lib.LK_RESIZE_BILINEAR, "area": lib.LK_RESIZE_AREA}


def _check(rc: int, what: str) -> None:
    if rc != lib.LK_OK:
        raise KernelError(f"{what}: {_CODES.get(rc, f'error {rc}')}",
                          fix="check shapes, strides and the region against the frame")


def _ptr(ctype: str, array: npt.NDArray[Any]) -> Any:
    # from_buffer is ~10x cheaper than ndarray.ctypes, which matters at tens of calls a frame;
    # it needs one contiguous block, so strided views go through ctypes.
    if array.flags.c_contiguous:
        return ffi.cast(ctype, ffi.from_buffer(array))
    return ffi.cast(ctype, array.ctypes.data)


def _plane(plane: npt.NDArray[np.uint8], name: str) -> tuple[Any, int, int]:
    """A plane's pointer, its row stride, and the bytes reachable from its first byte (for the
    C-side bounds checks)."""
    if plane.dtype.char != "B" or plane.ndim != 2:
        raise KernelError(f"{name} must be a 2-D uint8 array, got {plane.dtype} {plane.shape}")
    (rows, cols), (stride, step) = plane.shape, plane.strides
    if step != 1 or stride < cols:
        raise KernelError(f"{name} rows must be contiguous bytes with a stride >= the row "
                          f"(strides {plane.strides})")
    if rows == 0 or cols == 0:
        raise KernelError(f"{name} is empty ({plane.shape})")
    return _ptr("const uint8_t *", plane), stride, (rows - 1) * stride + cols


def _marshal(image: Image, spec: Preprocess,
             out: npt.NDArray[Any] | None) -> tuple[Any, Any, npt.NDArray[Any]]:
    """Checked ``lk_image`` and ``lk_preprocess_params`` structs and the output tensor."""
    dtype = _DTYPES[spec.dtype][1]
    shape = (spec.out_h, spec.out_w, spec.out_c)
    if out is None:
        out = np.empty(shape, dtype)
    elif out.dtype != dtype or out.shape[-3:] != shape or out.size != shape[0] * shape[1] * shape[2]:
        raise KernelError(f"output must be {dtype.__name__} of shape {shape} (or [1, ...]), got "
                          f"{out.dtype} {out.shape}")
    if not out.flags.c_contiguous:
        raise KernelError("output tensor must be C-contiguous")
    planes = image.planes
    nv12 = image.format == "nv12"
    if len(planes) != (2 if nv12 else 1):
        raise KernelError(f"{image.format} needs {2 if nv12 else 1} plane(s), got {len(planes)}")
    if planes[0].shape[1] < image.width * BYTES_PER_PIXEL[image.format]:
        raise KernelError(f"plane 0 rows hold {planes[0].shape[1]} bytes, need "
                          f"{image.width * BYTES_PER_PIXEL[image.format]}")
    plane0, stride0, bytes0 = _plane(planes[0], "plane 0")
    plane1, stride1, bytes1 = _plane(planes[1], "UV plane") if nv12 else (ffi.NULL, 0, 0)
    # One initializer in field order: cheaper than nine attribute stores through cffi.
    src = ffi.new("lk_image *", (_FORMATS[image.format], image.width, image.height, plane0,
                                 stride0, plane1, stride1, bytes0, bytes1))
    return src, _params(spec), out


@functools.lru_cache(maxsize=64)
def _params(spec: Preprocess) -> Any:
    """The ``lk_preprocess_params`` of a spec; read-only on the C side, so one per spec."""
    params = ffi.new("lk_preprocess_params *")
    if spec.roi:
        params.roi_x, params.roi_y, params.roi_w, params.roi_h = spec.roi
    params.out_w, params.out_h, params.out_c = spec.out_w, spec.out_h, spec.out_c
    params.out_rgb = int(spec.rgb)
    params.resize = _RESIZE[spec.resize]
    params.letterbox = int(spec.letterbox)
    params.pad_value = spec.pad_value
    params.dtype = _DTYPES[spec.dtype][0]
    params.mul = list(spec.mul)
    params.add = list(spec.add)
    return params


def preprocess(image: Image, spec: Preprocess,
               out: npt.NDArray[Any] | None = None) -> tuple[npt.NDArray[Any], LetterboxInfo]:
    """``lk_preprocess``: the frame into a (out_h, out_w, out_c) tensor (``out`` if given)."""
    src, params, out = _marshal(image, spec, out)
    info = ffi.new("lk_letterbox_info *")
    _check(lib.lk_preprocess(src, params, _ptr("void *", out), out.nbytes, info),
           f"preprocess {image.format} {image.width}x{image.height} -> {out.shape}")
    return out, LetterboxInfo(float(info.scale), int(info.offset_x), int(info.offset_y),
                              int(info.content_w), int(info.content_h))


def cuda_available() -> bool:
    """True when this build carries the CUDA kernels and a GPU is present."""
    return bool(lib.lk_cuda_available())


def cuda_supports(image: Image, spec: Preprocess) -> bool:
    """Whether ``preprocess_cuda`` handles this request (NV12, bilinear, RGB/BGR, no letterbox)."""
    return (image.format == "nv12" and spec.resize == "bilinear" and spec.out_c == 3
            and not spec.letterbox)


def preprocess_cuda(image: Image, spec: Preprocess,
                    out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
    """``lk_cuda_preprocess``: as ``preprocess``, on the GPU, bit-identical to the CPU kernel."""
    if not cuda_supports(image, spec):
        raise KernelError(f"the CUDA kernel does not handle {image.format} {spec.resize} "
                          f"letterbox={spec.letterbox} with {spec.out_c} channel(s)",
                          fix="use preprocess (the CPU kernel) for this request")
    src, params, out = _marshal(image, spec, out)
    rc = lib.lk_cuda_preprocess(src, params, _ptr("void *", out), out.nbytes)
    if rc == lib.LK_ENOTSUP:
        raise KernelError("this build has no CUDA kernels",
                          fix="rebuild with LEPTON_KERNELS=cuda on a machine with nvcc")
    if rc == lib.LK_EDEVICE:
        raise KernelError("the GPU failed the CUDA preprocess (no device, or a copy or launch "
                          "failed)", fix="check nvidia-smi / tegrastats and the CUDA driver")
    _check(rc, f"preprocess_cuda {image.format} {image.width}x{image.height} -> {out.shape}")
    return out


def _f32(array: npt.NDArray[Any], name: str, last: int | None = None) -> F32:
    a = np.ascontiguousarray(array, dtype=np.float32)
    if last is not None and (a.ndim != 2 or a.shape[1] != last):
        raise KernelError(f"{name} must have shape (N, {last}), got {a.shape}")
    return a


def dequantize(q: npt.NDArray[Any], scale: float, zero_point: int) -> F32:
    if q.dtype not in (np.uint8, np.int8):
        raise KernelError(f"dequantize takes uint8 or int8, got {q.dtype}")
    src = np.ascontiguousarray(q)
    out = np.empty(src.shape, np.float32)
    _check(lib.lk_dequantize(_ptr("const uint8_t *", src), src.size, int(src.dtype == np.int8),
                             scale, zero_point, _ptr("float *", out)), "dequantize")
    return out


def ssd_decode(encodings: npt.NDArray[Any], anchors: npt.NDArray[Any],
               scales: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)) -> F32:
    e, a = _f32(encodings, "encodings", 4), _f32(anchors, "anchors", 4)
    if e.shape != a.shape:
        raise KernelError(f"encodings {e.shape} and anchors {a.shape} differ")
    out = np.empty_like(e)
    sc = ffi.new("float[4]", list(scales))
    _check(lib.lk_ssd_decode(_ptr("const float *", e), _ptr("const float *", a), len(e), sc,
                             _ptr("float *", out)), "ssd_decode")
    return out


def yolo_decode(rows: npt.NDArray[Any], has_objectness: bool, threshold: float, input_w: float,
                input_h: float) -> tuple[F32, F32, npt.NDArray[np.int32]]:
    r = np.ascontiguousarray(rows, dtype=np.float32)
    if r.ndim != 2:
        raise KernelError(f"yolo rows must be 2-D (N, 4 [+1] + classes), got {r.shape}")
    n = r.shape[0]
    boxes = np.empty((n, 4), np.float32)
    scores = np.empty(n, np.float32)
    classes = np.empty(n, np.int32)
    kept = ffi.new("size_t *")
    _check(lib.lk_yolo_decode(_ptr("const float *", r), n, r.shape[1], int(has_objectness),
                              threshold, input_w, input_h, _ptr("float *", boxes),
                              _ptr("float *", scores), _ptr("int32_t *", classes), n, kept),
           "yolo_decode")
    k = int(kept[0])
    return boxes[:k], scores[:k], classes[:k]


_HEAD_DTYPES = {np.dtype(np.float32): lib.LK_OUT_FLOAT32, np.dtype(np.uint8): lib.LK_OUT_UINT8,
                np.dtype(np.int8): lib.LK_OUT_INT8}


def yolo_head(raw: npt.NDArray[Any], layout: YoloLayout, scale: float, zero_point: int,
              threshold: float, norm_w: float, norm_h: float,
              ) -> tuple[F32, F32, npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Candidates of a YOLO head read in place (no transpose, no dequantization of the whole
    tensor): boxes, scores, classes, anchor indices; as ``heads.yolo_candidates``."""
    src = np.ascontiguousarray(raw)
    dtype = _HEAD_DTYPES.get(src.dtype)
    if dtype is None:
        raise KernelError(f"yolo_head takes float32, uint8 or int8, got {src.dtype}")
    if src.size < layout.anchors * layout.channels:
        raise KernelError(f"yolo_head: {src.size} values for {layout.anchors} anchors x "
                          f"{layout.channels} channels")
    head = ffi.new("lk_yolo_head *")
    head.data = ffi.from_buffer(src)
    head.data_elems = src.size
    head.dtype = dtype
    head.scale = float(scale) if dtype != lib.LK_OUT_FLOAT32 else 0.0
    head.zero_point = int(zero_point)
    head.anchors = layout.anchors
    head.channels = layout.channels
    head.anchor_stride = layout.anchor_stride
    head.channel_stride = layout.channel_stride
    head.has_objectness = int(layout.has_objectness)
    head.threshold = threshold
    head.norm_w, head.norm_h = norm_w, norm_h
    n = layout.anchors
    boxes = np.empty((max(n, 1), 4), np.float32)
    scores = np.empty(max(n, 1), np.float32)
    classes = np.empty(max(n, 1), np.int32)
    index = np.empty(max(n, 1), np.int32)
    kept = ffi.new("size_t *")
    _check(lib.lk_yolo_decode_head(head, _ptr("float *", boxes), _ptr("float *", scores),
                                   _ptr("int32_t *", classes), _ptr("int32_t *", index), n, kept),
           "yolo_head")
    k = int(kept[0])
    return boxes[:k], scores[:k], classes[:k], index[:k]


def nms(boxes: npt.NDArray[Any], scores: npt.NDArray[Any], classes: npt.NDArray[Any],
        iou_threshold: float, max_out: int) -> list[int]:
    b = _f32(boxes, "boxes", 4)
    s = np.ascontiguousarray(scores, dtype=np.float32)
    c = np.ascontiguousarray(classes, dtype=np.int32)
    if not len(b) == len(s) == len(c):
        raise KernelError(f"nms: {len(b)} boxes, {len(s)} scores, {len(c)} classes")
    if max_out < 0:
        raise KernelError("nms: max_out must be >= 0")
    keep = np.empty(max(min(max_out, len(b)), 1), np.int32)
    kept = ffi.new("size_t *")
    _check(lib.lk_nms(_ptr("const float *", b), _ptr("const float *", s), _ptr("const int32_t *", c),
                      len(b), iou_threshold, min(max_out, len(b)), _ptr("int32_t *", keep), kept),
           "nms")
    return [int(i) for i in keep[: int(kept[0])]]


def topk(scores: npt.NDArray[Any], k: int) -> list[int]:
    s = np.ascontiguousarray(scores, dtype=np.float32).reshape(-1)
    if not 0 <= k <= s.size:
        raise KernelError(f"topk: k={k} outside 0..{s.size}")
    out = np.empty(max(k, 1), np.int32)
    _check(lib.lk_topk(_ptr("const float *", s), s.size, k, _ptr("int32_t *", out)), "topk")
    return [int(i) for i in out[:k] if i >= 0]


class Motion:
    """``lk_motion_update`` with the state and scratch it needs."""

    def __init__(self, state: MotionState) -> None:
        if not (0 < state.width <= 4096 and 0 < state.height <= 4096):
            raise KernelError(f"motion grid {state.width}x{state.height} outside 1..4096")
        self.state = state
        self.background = np.zeros((state.height, state.width), np.uint16)
        self.scratch = np.empty(state.width * state.height * 4 + 64, np.uint8)
        self.c_state = ffi.new("lk_motion_state *")
        self.c_state.width, self.c_state.height = state.width, state.height
        self.c_state.background = _ptr("uint16_t *", self.background)
        self.c_state.alpha_q8, self.c_state.threshold = state.alpha_q8, state.threshold

    def update(self, gray: npt.NDArray[np.uint8], capacity: int = 8) -> tuple[float, list[tuple[int, ...]]]:
        if gray.dtype != np.uint8 or gray.shape != (self.state.height, self.state.width):
            raise KernelError(f"motion frame must be uint8 {(self.state.height, self.state.width)}, "
                              f"got {gray.dtype} {gray.shape}")
        if gray.strides[1] != 1:
            gray = np.ascontiguousarray(gray)
        score = ffi.new("float *")
        boxes = ffi.new("lk_motion_box[]", max(capacity, 1))
        count = ffi.new("size_t *")
        _check(lib.lk_motion_update(self.c_state, _ptr("const uint8_t *", gray), gray.strides[0],
                                    score, boxes, capacity, count, _ptr("uint8_t *", self.scratch),
                                    self.scratch.nbytes), "motion_update")
        return float(score[0]), [(b.x0, b.y0, b.x1, b.y1, b.pixels)
                                 for b in (boxes[i] for i in range(int(count[0])))]


def variant() -> str:
    """What runs: 'avx2', 'neon' or 'portable' (the row kernels chosen at load), or 'cuda'."""
    name: bytes = ffi.string(lib.lk_variant_name())
    return name.decode()


def _report_override() -> None:
    # The C side falls back to the best variant when LEPTON_KERNELS_VARIANT names one this build
    # or CPU cannot run; say so here, where it can be logged.
    wanted = os.environ.get("LEPTON_KERNELS_VARIANT", "").strip()
    if wanted and wanted != "auto" and wanted != variant() and variant() != "cuda":
        log.warning("LEPTON_KERNELS_VARIANT=%s is not available in this build or on this CPU; "
                    "the %s kernels run (use portable, auto, or the SIMD variant of this "
                    "machine)", wanted, variant())


_report_override()
