"""The CUDA preprocess kernel: bit-identical to the CPU kernel on the GPU, a clear error without one.

The GPU tests run where the extension was built with LEPTON_KERNELS=cuda and a device is present
(a Jetson, or the lent GPU machine); elsewhere they skip and only the no-CUDA behaviour is checked.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import KernelError
from agent.kernels import Image, Preprocess

native = pytest.importorskip("agent.kernels.native")
gpu = pytest.mark.skipif(not native.cuda_available(),
                         reason="needs the CUDA build (LEPTON_KERNELS=cuda) and a GPU")


def _gpu_and_toolkit() -> bool:
    """nvidia-smi lists a GPU and nvcc is on PATH: the CUDA build can and should be tested."""
    smi = shutil.which("nvidia-smi")
    if smi is None or shutil.which("nvcc") is None:
        return False
    listed = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return listed.returncode == 0 and "GPU " in listed.stdout


@pytest.mark.skipif(not _gpu_and_toolkit(), reason="no GPU with the CUDA toolkit on this machine")
def test_a_gpu_machine_runs_the_gpu_tests() -> None:
    """Where a GPU and nvcc are present the GPU tests must run, not skip for want of the build."""
    assert native.variant() == "cuda" and native.cuda_available(), (
        "this machine has a GPU and nvcc, but the kernels were built without CUDA, so the GPU tests "
        "skipped; rebuild: LEPTON_KERNELS=cuda LEPTON_CUDA_ARCH=sm_XX pip install -e . (docs/testing.md)")


def _nv12(width: int, height: int, seed: int, pad: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    cw, ch = (width + 1) // 2, (height + 1) // 2
    y = rng.integers(0, 256, (height, width + pad), np.uint8)[:, :width]
    uv = rng.integers(0, 256, (ch, 2 * cw + pad), np.uint8)[:, :2 * cw]
    return Image("nv12", width, height, (y, uv))


def test_unsupported_requests_are_refused_before_the_gpu() -> None:
    image = _nv12(64, 48, 0)
    with pytest.raises(KernelError, match="does not handle nv12 area"):
        native.preprocess_cuda(image, Preprocess(out_w=8, out_h=8, resize="area"))
    with pytest.raises(KernelError, match="letterbox=True"):
        native.preprocess_cuda(image, Preprocess(out_w=8, out_h=8, letterbox=True))


@pytest.mark.skipif(native.variant() == "cuda", reason="this build carries the CUDA kernels")
def test_builds_without_cuda_say_how_to_get_it() -> None:
    assert not native.cuda_available()
    with pytest.raises(KernelError, match="LEPTON_KERNELS=cuda"):
        native.preprocess_cuda(_nv12(64, 48, 0), Preprocess(out_w=8, out_h=8))


@gpu
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 700), height=st.integers(1, 500), out_w=st.integers(1, 320),
       out_h=st.integers(1, 320), pad=st.integers(0, 37), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(["uint8", "int8", "float32"]), rgb=st.booleans(),
       roi_frac=st.tuples(st.floats(0, 0.5), st.floats(0, 0.5), st.floats(0.05, 1), st.floats(0.05, 1)))
def test_gpu_matches_cpu_bit_for_bit(width: int, height: int, out_w: int, out_h: int, pad: int,
                                     seed: int, dtype: str, rgb: bool,
                                     roi_frac: tuple[float, float, float, float]) -> None:
    image = _nv12(width, height, seed, pad)
    fx, fy, fw, fh = roi_frac
    rx, ry = int(fx * width), int(fy * height)
    rw, rh = max(1, min(width - rx, int(fw * width))), max(1, min(height - ry, int(fh * height)))
    mul, add = ((1 / 127.5,) * 3, (-1.0,) * 3) if dtype == "float32" else ((1.0,) * 3, (0.0,) * 3)
    if dtype == "int8":
        add = (-128.0,) * 3
    spec = Preprocess(out_w=out_w, out_h=out_h, dtype=dtype, rgb=rgb, roi=(rx, ry, rw, rh),
                      mul=mul, add=add)
    cpu, _ = native.preprocess(image, spec)
    on_gpu = native.preprocess_cuda(image, spec)
    np.testing.assert_array_equal(on_gpu, cpu)


@gpu
@pytest.mark.parametrize(("size", "out"), [((1, 1), (300, 300)), ((1920, 1080), (1, 1)),
                                           ((7680, 4320), (300, 300)), ((2, 2), (2, 2))])
def test_gpu_extreme_ratios(size: tuple[int, int], out: tuple[int, int]) -> None:
    image = _nv12(*size, seed=5)
    spec = Preprocess(out_w=out[0], out_h=out[1])
    np.testing.assert_array_equal(native.preprocess_cuda(image, spec), native.preprocess(image, spec)[0])


@gpu
def test_gpu_bad_arguments_raise() -> None:
    image = _nv12(64, 48, 1)
    with pytest.raises(KernelError, match="output must be"):
        native.preprocess_cuda(image, Preprocess(out_w=8, out_h=8), out=np.empty((4, 4, 3), np.uint8))
    with pytest.raises(KernelError, match="out of range"):
        native.preprocess_cuda(image, Preprocess(out_w=8, out_h=8, roi=(60, 0, 10, 10)))
