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
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = ("ref", "neon", "cuda")

# The public headers, in include order; the cdef is read from them (cdef_from_headers), so a
# declaration or constant changed there reaches Python with no second edit.
HEADERS = ("common.h", "preprocess.h", "postprocess.h", "motion.h", "cuda.h")
# Declared in the headers but not wanted from Python (device pointers, CUDA builds only).
NOT_EXPORTED = ("lk_cuda_preprocess_nv12",)


def _drop_cplusplus_guards(text: str) -> str:
    """The header without its ``#ifdef __cplusplus ... #endif`` blocks (extern "C" braces)."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#ifdef __cplusplus"):
            skipping = True
        elif skipping and stripped.startswith("#endif"):
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out)


def header_to_cdef(text: str) -> str:
    """One public header as cffi cdef text (API mode): comments, include guards and includes
    dropped, valued ``#define``s and enum values left to the compiler (``...``), so cffi reads
    every constant from the header as compiled."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    text = re.sub(r"//[^\n]*", "", text)
    text = _drop_cplusplus_guards(text)
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            define = re.match(r"#\s*define\s+([A-Z][A-Z0-9_]*)\s+\S", stripped)
            if define:
                lines.append(f"#define {define.group(1)} ...")
            continue
        lines.append(line)
    cdef = "\n".join(lines)

    def open_enum(match: re.Match[str]) -> str:
        names = [re.sub(r"=.*", "", item, flags=re.DOTALL).strip()
                 for item in match.group(1).split(",")]
        return "enum {" + ", ".join(n for n in names if n) + ", ... }"

    cdef = re.sub(r"enum\s*\{([^}]*)\}", open_enum, cdef)
    for name in NOT_EXPORTED:
        cdef = re.sub(r"[^;{}]*\b" + name + r"\s*\([^;]*\);", "", cdef)
    return cdef


def cdef_from_headers(include: Path = HERE / "include" / "lepton") -> str:
    """The cffi cdef of the public API: every header in HEADERS, converted."""
    return "\n".join(header_to_cdef((include / name).read_text()) for name in HEADERS)


SOURCES = ["src/preprocess.c", "src/postprocess.c", "src/motion.c", "src/row_portable.c",
           "src/row_neon.c", "src/row_gather.c", "src/dispatch.c"]


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
    ffi.cdef(cdef_from_headers())
    ffi.set_source(
        "agent.kernels._native",
        "".join(f'#include "lepton/{name}"\n' for name in HEADERS),
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
