"""The C self-test: NEON vs portable under qemu-aarch64, and the portable build under ASan/UBSan."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

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
