"""The C self-test: NEON vs portable under qemu-aarch64, and the portable build under ASan/UBSan."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT


def mismatches(stdout: str) -> list[int]:
    """The counts of every "<n> checks, <m> mismatches" line the self-test printed (one per run);
    parsed as numbers, so "10 mismatches" is not read as "0 mismatches"."""
    return [int(m) for m in re.findall(r"^\d+ checks, (\d+) mismatches$", stdout, re.MULTILINE)]


def test_mismatch_counts_are_parsed_as_numbers() -> None:
    assert mismatches("variant: ref\n1200 checks, 10 mismatches\n") == [10]
    assert mismatches("1200 checks, 0 mismatches\n== cpu b\n1200 checks, 0 mismatches\n") == [0, 0]
    assert mismatches("no summary") == []


def _cross_tools_missing() -> str | None:
    if platform.machine() == "aarch64":
        return None
    if not shutil.which("aarch64-linux-gnu-gcc"):
        return "gcc-aarch64-linux-gnu not installed (make test installs it with apt)"
    if not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")):
        return "qemu-user-static not installed (make test installs it with apt)"
    return None


def test_neon_matches_portable_under_qemu() -> None:
    missing = _cross_tools_missing()
    if missing:
        pytest.skip(missing)
    env = None
    if platform.machine() == "aarch64":  # on a board: build natively, run directly
        import os

        env = {**os.environ, "CROSS_CC": "cc"}
    out = subprocess.run(["bash", "cross/test-neon.sh", "1500"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    counts = mismatches(out.stdout)
    assert out.stdout.count("variant: neon") >= 1 and counts and all(n == 0 for n in counts), out.stdout


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_portable_kernels_clean_under_sanitizers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    build = subprocess.run(
        ["make", "-s", "-f", "native/tests/selftest.mk", "CC=gcc", f"OUT={tmp_path}", "LDFLAGS=",
         "CFLAGS=-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp_path / "selftest"), "1500"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert mismatches(run.stdout) == [0], run.stdout


# --- The Python face of the native build: constants from the headers, the variant that runs ---

HEADERS = ROOT / "native" / "include" / "lepton"


def header_constants() -> dict[str, int]:
    """Every enum member and integer #define of the public headers with its value, read from the
    header text here, independently of native/build_ffi.py."""
    found: dict[str, int] = {}
    for header in sorted(HEADERS.glob("*.h")):
        text = re.sub(r"/\*.*?\*/", " ", header.read_text(), flags=re.DOTALL)
        for body in re.findall(r"enum\s*\{([^}]*)\}", text):
            following = 0
            for item in filter(None, (part.strip() for part in body.split(","))):
                name, _, value = (piece.strip() for piece in item.partition("="))
                following = int(value, 0) if value else following
                found[name] = following
                following += 1
        for name, value in re.findall(r"^\s*#\s*define\s+([A-Z][A-Z0-9_]*)\s+(-?(?:0x)?[0-9A-Fa-f]+)u?\s*$",
                                      text, re.MULTILINE):
            found[name] = int(value, 0)
    return found


def test_every_header_constant_reaches_python_with_its_value() -> None:
    from agent.kernels import native

    constants = header_constants()
    assert {"LK_OK", "LK_ENOTSUP", "LK_EDEVICE", "LK_FMT_NV12", "LK_RESIZE_AREA",
            "LK_OUT_FLOAT32", "LK_VARIANT_AVX2"} <= set(constants)
    got = {name: getattr(native.lib, name, None) for name in constants}
    assert got == constants


def test_cdef_is_generated_from_the_header_text() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_ffi", ROOT / "native" / "build_ffi.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    cdef = build.header_to_cdef(
        "#ifndef X_H\n#define X_H\n#include <stdint.h>\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
        "#define LK_LIMIT 64  /* a bound */\n"
        "typedef enum { LK_A = 0, LK_B = 7 /* seven */ } lk_thing;\n"
        "int lk_do(const lk_thing *t);  // does it\n"
        "#ifdef __cplusplus\n}\n#endif\n#endif\n")
    assert "#define LK_LIMIT ..." in cdef
    assert re.search(r"enum \{LK_A, LK_B, \.\.\. \} lk_thing;", cdef), cdef
    assert "int lk_do(const lk_thing *t);" in cdef
    assert "extern" not in cdef and "#include" not in cdef and "/*" not in cdef and "//" not in cdef


def _cpu_has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"^flags\s*:.*\bavx2\b", flags, re.MULTILINE) is not None


# Preprocesses a fixed set of frames and specs, printing the variant and a digest of every output.
_DIGEST = """
import hashlib, numpy as np
from agent import kernels
from agent.kernels import Image, Preprocess
rng = np.random.default_rng(7)
h = hashlib.sha256()
nv12 = Image.nv12(rng.integers(0, 256, (720, 1280), dtype=np.uint8),
                  rng.integers(0, 256, (360, 1280), dtype=np.uint8))
bgr = Image.packed("bgr", rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
gray = Image.packed("gray", rng.integers(0, 256, (240, 320), dtype=np.uint8))
for image in (nv12, bgr, gray):
    for resize in ("bilinear", "area"):
        for out_w, out_h, rgb, letterbox in ((300, 300, True, False), (203, 97, False, True)):
            spec = Preprocess(out_w=out_w, out_h=out_h, out_c=1 if image is gray else 3,
                              rgb=rgb, resize=resize, letterbox=letterbox)
            out, _ = kernels.active.preprocess(image, spec)
            h.update(np.ascontiguousarray(out).tobytes())
print(kernels.variant(), h.hexdigest())
"""


def _digest(variant: str | None) -> tuple[str, str]:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("LEPTON_KERNELS", "LEPTON_KERNELS_VARIANT")}
    if variant is not None:
        env["LEPTON_KERNELS_VARIANT"] = variant
    out = subprocess.run([sys.executable, "-c", _DIGEST], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    name, digest = out.stdout.split()
    return name, digest


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not _cpu_has_avx2(),
                    reason="needs an x86-64 CPU with AVX2")
def test_variant_reports_avx2_and_the_portable_override_gives_identical_results() -> None:
    best = _digest(None)
    portable = _digest("portable")
    assert best[0] == "avx2" and portable[0] == "portable"
    assert best[1] == portable[1]
