"""The agent's glibc setting: frame-sized blocks are mapped and returned on free."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# malloc(4 MiB), free, malloc(4 MiB) again, then report what glibc holds in mapped blocks
# (mallinfo2().hblkhd) while the second block is alive.
PROBE = r"""
import ctypes, json, sys
from agent.service.memory import return_large_buffers_to_os
applied = return_large_buffers_to_os() if sys.argv[1] == "pin" else False
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.free(libc.malloc(4 << 20))
block = libc.malloc(4 << 20)
print(json.dumps({"applied": applied, "mapped": libc.mallinfo2().hblkhd}))
libc.free(block)
"""

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="a glibc setting")


def _probe(mode: str, **env: str) -> dict[str, int]:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         cwd=ROOT, env={**environ, **env}, check=True)
    result: dict[str, int] = json.loads(out.stdout)
    return result


@glibc_only
def test_pinned_threshold_maps_frame_sized_blocks() -> None:
    pinned = _probe("pin")
    assert pinned["applied"] and pinned["mapped"] >= 4 << 20
    # glibc's own behaviour, which the setting exists to stop: after a 4 MiB block is freed,
    # the next one comes from the heap and stays there when freed.
    assert _probe("default")["mapped"] < 4 << 20


@glibc_only
def test_operator_setting_wins() -> None:
    probed = _probe("pin", MALLOC_MMAP_THRESHOLD_="8388608")
    assert not probed["applied"]
