"""pytest plugin for the mutation run (``make mutants``, ``-p tests.mutants_plugin``).

mutmut runs the tests many times in one process and in forks of it, so hypothesis sees each test
method called from several executors; the run also wants the same examples every time, so a
mutant's verdict does not depend on the draw, and no example database inside mutants/.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile("mutants", derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.differing_executors, HealthCheck.too_slow])
settings.load_profile("mutants")
