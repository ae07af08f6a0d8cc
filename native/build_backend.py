"""PEP 517 backend: setuptools, plus the cffi extension declared in native/build_ffi.py.

pyproject.toml cannot pass ``cffi_modules`` to setuptools and the top-level layout has no
setup.py, so this wraps ``setuptools.setup`` to add it.
"""

from __future__ import annotations

import setuptools
from setuptools.build_meta import *  # noqa: F403  (re-export the PEP 517 hooks)

_setup = setuptools.setup


def _setup_with_kernels(**attrs):  # type: ignore[no-untyped-def]
    attrs.setdefault("cffi_modules", ["native/build_ffi.py:ffibuilder"])
    return _setup(**attrs)


setuptools.setup = _setup_with_kernels
