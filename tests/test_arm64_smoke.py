"""Slow tier: the whole agent installed from its .deb in an emulated arm64 Debian
(cross/smoke-arm64.sh). Needs root, debootstrap and qemu-user-static; ~15 min the first time
(rootfs build), a few minutes with the cached rootfs."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_agent_runs_on_arm64_from_its_package() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for debootstrap and chroot")
    for tool in ("debootstrap", "qemu-aarch64-static", "dpkg-deb"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (make test-arm installs it)")
    out = subprocess.run(["bash", "cross/smoke-arm64.sh"], cwd=ROOT, capture_output=True, text=True,
                         timeout=3600)
    print(out.stdout[-6000:])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "1 passed, 0 failed" in out.stdout
