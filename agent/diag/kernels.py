"""``diag kernels``: the kernel variant in use and known-answer self-tests."""

from __future__ import annotations

import numpy as np

from agent import kernels
from agent.diag import CheckResult
from agent.kernels import Image, MotionState, Preprocess
from agent.kernels import reference as ref


def _self_tests() -> list[str]:
    """Names of failed known-answer tests (empty: all passed)."""
    k = kernels.active
    failed: list[str] = []
    ramp = np.tile(np.arange(8, dtype=np.uint8) * 10, (4, 1))
    same, _ = k.preprocess(Image.packed("gray", ramp), Preprocess(out_w=8, out_h=4, out_c=1))
    if not np.array_equal(same[..., 0], ramp):
        failed.append("bilinear identity")
    mean, _ = k.preprocess(Image.packed("gray", ramp), Preprocess(out_w=1, out_h=1, out_c=1,
                                                                  resize="area"))
    if int(mean[0, 0, 0]) != 35:
        failed.append("area mean")
    y = np.full((4, 4), 128, np.uint8)
    uv = np.full((2, 4), 128, np.uint8)
    rgb, _ = k.preprocess(Image.nv12(y, uv), Preprocess(out_w=2, out_h=2))
    if not (rgb == 130).all():
        failed.append("nv12 -> rgb (BT.601)")
    rng = np.random.default_rng(1234)
    frame = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)
    for resize in ("bilinear", "area"):
        spec = Preprocess(out_w=19, out_h=13, resize=resize, letterbox=True)
        a, _ = k.preprocess(Image.packed("bgr", frame), spec)
        b, _ = ref.preprocess(Image.packed("bgr", frame), spec)
        if np.abs(a.astype(int) - b.astype(int)).max() > 1:
            failed.append(f"{resize} vs reference")
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.95, 1], [0.5, 0.5, 0.6, 0.6]], np.float32)
    if k.nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.zeros(3, np.int32), 0.5, 10) != [0, 2]:
        failed.append("nms")
    motion = k.Motion(MotionState(16, 8))
    motion.update(np.zeros((8, 16), np.uint8))
    score, _ = motion.update(np.zeros((8, 16), np.uint8))
    moved = np.zeros((8, 16), np.uint8)
    moved[2:5, 3:7] = 200
    score_moved, boxes = motion.update(moved)
    if score != 0.0 or score_moved <= 0 or boxes[:1] != [(3, 2, 6, 4, 12)]:
        failed.append("motion")
    if getattr(k, "cuda_available", lambda: False)():
        nv12 = Image("nv12", 61, 37, (rng.integers(0, 256, (37, 61), dtype=np.uint8),
                                      rng.integers(0, 256, (19, 62), dtype=np.uint8)))
        spec = Preprocess(out_w=23, out_h=17, roi=(3, 2, 50, 30))
        if not np.array_equal(k.preprocess_cuda(nv12, spec), k.preprocess(nv12, spec)[0]):
            failed.append("cuda nv12 vs cpu")
    return failed


def check_kernels() -> CheckResult:
    variant = kernels.variant()
    details: dict[str, object] = {"variant": variant}
    if variant == "cuda":
        details["cuda_device"] = bool(kernels.active.cuda_available())
    try:
        failed = _self_tests()
    except Exception as exc:
        return CheckResult("kernels", "fail", f"self-test raised {exc!r}",
                           "rebuild the native module: pip install --force-reinstall lepton-edge",
                           details)
    details["failed"] = failed
    if failed:
        return CheckResult("kernels", "fail", f"{variant} kernels failed: {', '.join(failed)}",
                           "rerun with LEPTON_KERNELS_VARIANT=portable to rule out the SIMD path; "
                           "report it",
                           details)
    if variant == "numpy":
        return CheckResult("kernels", "warn", "native kernels missing; the numpy reference runs "
                           "(correct, slower)", "reinstall with gcc and python3-dev present so "
                           "the cffi extension builds", details)
    if variant == "cuda" and not details["cuda_device"]:
        return CheckResult("kernels", "warn", "CUDA kernels built but no GPU answers; the CPU "
                           "kernels run", "check the NVIDIA driver (nvidia-smi, or tegrastats on "
                           "a Jetson) and that the service user is in the video group", details)
    return CheckResult("kernels", "pass", f"{variant} kernels, known-answer self-tests passed",
                       details=details)
