"""pytest plugin for the mutation run (``make mutants``, ``-p tests.mutants_plugin``).

mutmut runs the tests many times in one process and in forks of it, so hypothesis sees each test
method called from several executors; the run also wants the same examples every time, so a
mutant's verdict does not depend on the draw, and no example database inside mutants/.
"""

from __future__ import annotations

import shutil
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("mutants", derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow])
settings.load_profile("mutants")


# mutmut forks one child per mutant from a session that already made pytest's base temp
# directory, so every test's tmp_path piles up there for the whole run (the CI run of stop 12
# filled the disk 5197 mutants in: outboxes, reserve files, clips). Each test's own tmp_path
# goes as soon as the test is over.
_TMP_PATHS: dict[str, Path] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    path = getattr(item, "funcargs", {}).get("tmp_path")
    if isinstance(path, Path):
        _TMP_PATHS[item.nodeid] = path
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield
    path = _TMP_PATHS.pop(item.nodeid, None)
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
