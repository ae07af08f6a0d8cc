"""Pre/post-processing kernels: native (C, NEON, CUDA) when built, the numpy reference otherwise.

``LEPTON_KERNELS=numpy`` forces the reference at run time (for comparisons); a board whose
native module failed to build still boots, with a logged warning.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING

from agent.kernels import reference
from agent.kernels.backend import KernelBackend
from agent.kernels.reference import Image, LetterboxInfo, MotionState, Preprocess

log = logging.getLogger("agent.kernels")

__all__ = ["Image", "KernelBackend", "LetterboxInfo", "MotionState", "Preprocess", "active",
           "variant"]


def _load() -> ModuleType:
    if os.environ.get("LEPTON_KERNELS", "").strip().lower() == "numpy":
        return reference
    try:
        from agent.kernels import native

        return native
    except ImportError as exc:
        log.warning("native kernels unavailable (%s); using the numpy reference, which is slower. "
                    "Rebuild with `pip install -e .` (needs gcc and python3-dev)", exc)
        return reference


active: ModuleType = _load()


def variant() -> str:
    """What runs: 'avx2', 'neon' or 'portable' (native row kernels, chosen at load; set
    LEPTON_KERNELS_VARIANT=portable to force the portable C), 'cuda' for a CUDA build, 'numpy'
    for the fallback."""
    if active is reference:
        return "numpy"
    name: str = active.variant()
    return name


if TYPE_CHECKING:
    # mypy checks that both backends satisfy the protocol (a module is checked like an object).
    from agent.kernels import native as _native_backend

    _reference_is_a_backend: KernelBackend = reference
    _native_is_a_backend: KernelBackend = _native_backend
