"""The one build script of the native kernels (cffi, API mode).

The SIMD variant follows the *target* architecture, not the host's: a cross build for
aarch64 (``_PYTHON_HOST_PLATFORM=linux-aarch64``, as crossenv and cibuildwheel set it)
gets NEON even on an x86 host. ``LEPTON_KERNELS=ref|neon|cuda|auto`` overrides:

- ``ref``  portable C only (on aarch64 too: the NEON row kernels are compiled out);
- ``neon`` NEON row kernels (refused unless the target is aarch64/arm64);
- ``cuda`` portable/NEON plus the CUDA kernels in native/cuda (needs ``nvcc``; for Jetson
  Orin, sm_87, set ``LEPTON_CUDA_ARCH``);
- ``auto`` (default) ``neon`` on aarch64 targets, ``ref`` elsewhere.

Used by ``pip install`` (pyproject's in-tree backend, native/build_backend.py) and by
``python native/build_ffi.py`` for an in-place build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = ("ref", "neon", "cuda")

CDEF = """
typedef struct {
    int format; int width, height;
    const uint8_t *plane0; int stride0;
    const uint8_t *plane1; int stride1;
    size_t plane0_bytes; size_t plane1_bytes;
} lk_image;
typedef struct {
    int roi_x, roi_y, roi_w, roi_h;
    int out_w, out_h, out_c;
    int out_rgb; int resize; int letterbox; int pad_value; int dtype;
    float mul[3], add[3];
} lk_preprocess_params;
typedef struct { float scale; int offset_x, offset_y, content_w, content_h; } lk_letterbox_info;
int lk_preprocess(const lk_image *src, const lk_preprocess_params *params, void *out,
                  size_t out_bytes, lk_letterbox_info *info);

int lk_dequantize(const uint8_t *q, size_t n, int is_signed, float scale, int zero_point, float *out);
int lk_ssd_decode(const float *encodings, const float *anchors, size_t n, const float scales[4],
                  float *boxes_out);
int lk_yolo_decode(const float *rows, size_t n, int row_len, int has_objectness, float threshold,
                   float input_w, float input_h, float *boxes_out, float *scores_out,
                   int32_t *classes_out, size_t capacity, size_t *kept);
int lk_nms(const float *boxes, const float *scores, const int32_t *classes, size_t n,
           float iou_threshold, size_t max_out, int32_t *keep_out, size_t *kept);
int lk_topk(const float *scores, size_t n, size_t k, int32_t *index_out);

typedef struct {
    int width, height; uint16_t *background; int initialized; int alpha_q8; int threshold;
} lk_motion_state;
typedef struct { int x0, y0, x1, y1; int pixels; } lk_motion_box;
int lk_motion_update(lk_motion_state *state, const uint8_t *gray, int stride, float *score,
                     lk_motion_box *boxes, size_t capacity, size_t *count, uint8_t *scratch,
                     size_t scratch_bytes);

int lk_variant(void);
const char *lk_variant_name(void);
int lk_cuda_available(void);
int lk_cuda_preprocess(const lk_image *src, const lk_preprocess_params *params, void *out,
                       size_t out_bytes);
"""

SOURCES = ["src/preprocess.c", "src/postprocess.c", "src/motion.c", "src/row_portable.c",
           "src/row_neon.c", "src/row_gather.c", "src/variant.c"]


def target_platform() -> str:
    """The platform the extension is built for (cross builds set _PYTHON_HOST_PLATFORM)."""
    return os.environ.get("_PYTHON_HOST_PLATFORM") or sysconfig.get_platform()


def is_arm64(platform: str) -> bool:
    return any(tag in platform for tag in ("aarch64", "arm64"))


def choose_variant(platform: str, requested: str | None) -> str:
    """The kernel variant for a target platform and an optional LEPTON_KERNELS request."""
    wanted = (requested or "auto").strip().lower()
    if wanted == "auto":
        return "neon" if is_arm64(platform) else "ref"
    if wanted not in VARIANTS:
        raise ValueError(f"LEPTON_KERNELS={requested!r}: use one of auto, {', '.join(VARIANTS)}")
    if wanted == "neon" and not is_arm64(platform):
        raise ValueError(f"LEPTON_KERNELS=neon needs an aarch64 target, not {platform!r}")
    return wanted


def _cuda_objects(build_dir: Path) -> list[str]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("LEPTON_KERNELS=cuda but nvcc is not on PATH (install the CUDA toolkit)")
    arch = os.environ.get("LEPTON_CUDA_ARCH", "sm_87")
    build_dir.mkdir(parents=True, exist_ok=True)
    obj = build_dir / "preprocess_cuda.o"
    # --fmad=false: the C side is built with -ffp-contract=off, and the results must match bit
    # for bit.
    subprocess.run([nvcc, "-O3", f"-arch={arch}", "-std=c++17", "--fmad=false", "-Xcompiler",
                    "-fPIC", "-I", str(HERE / "include"),
                    "-c", str(HERE / "cuda" / "preprocess.cu"), "-o", str(obj)], check=True)
    return [str(obj)]


def _cudart_dir() -> Path:
    """The directory holding libcudart.so: $CUDA_HOME, beside nvcc, or /usr/local/cuda*."""
    homes = [Path(h) for h in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")) if h]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(Path(nvcc).resolve().parents[1])
    homes += sorted(Path("/usr/local").glob("cuda*"))
    for home in homes:
        for sub in ("lib64", "lib", "targets/aarch64-linux/lib", "targets/x86_64-linux/lib"):
            if (home / sub / "libcudart.so").exists():
                return home / sub
    raise RuntimeError("LEPTON_KERNELS=cuda but libcudart.so was not found; set CUDA_HOME to the "
                       "CUDA toolkit (e.g. /usr/local/cuda)")


def make_builder() -> FFI:
    platform = target_platform()
    variant = choose_variant(platform, os.environ.get("LEPTON_KERNELS"))
    defines: list[tuple[str, str | None]] = []
    # setuptools refuses absolute source paths: name them relative to where the build runs.
    sources = [os.path.relpath(HERE / s) for s in SOURCES]
    extra_objects: list[str] = []
    libraries = ["m"]
    library_dirs: list[str] = []
    extra_link_args: list[str] = []
    if variant == "ref" and is_arm64(platform):
        defines.append(("LK_FORCE_PORTABLE", None))
    if variant == "cuda":
        defines.append(("LK_WITH_CUDA", None))
        extra_objects = _cuda_objects(ROOT / "build" / "cuda")
        libraries += ["cudart", "stdc++"]
        cudart = _cudart_dir()
        library_dirs.append(str(cudart))
        extra_link_args.append(f"-Wl,-rpath,{cudart}")
    else:
        sources.append(os.path.relpath(HERE / "src" / "cuda_stub.c"))
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "agent.kernels._native",
        '#include "lepton/preprocess.h"\n#include "lepton/postprocess.h"\n'
        '#include "lepton/motion.h"\n#include "lepton/cuda.h"\n',
        sources=sources,
        include_dirs=[str(HERE / "include")],
        define_macros=defines,
        extra_compile_args=["-std=c99", "-O3", "-ffp-contract=off", "-fno-math-errno"],
        extra_objects=extra_objects,
        libraries=libraries,
        library_dirs=library_dirs,
        extra_link_args=extra_link_args,
    )
    print(f"lepton kernels: variant {variant} for target {platform}", file=sys.stderr)
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=str(ROOT), verbose=False)
