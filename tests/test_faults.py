"""Fault injection with real processes: mosquitto, ingest and the agent, on loopback.

The short version (2 cycles, a 3-second outage) runs in the default tests; the full one
(20 broker kills, 20 agent kills, a 60-second outage) in the slow tier, as CI runs it.
Each run prints its figures.
"""

from __future__ import annotations

import pytest

from agent.devtools.faults import format_report, run_fault_scenario
from agent.devtools.mosquitto import find_mosquitto

pytestmark = [pytest.mark.broker,
              pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto")]


def _check(scenario: str, cycles: int, outage_s: float = 3.0) -> None:
    report = run_fault_scenario(scenario, cycles, outage_s=outage_s, seed=cycles)
    print(format_report(report))
    assert report.generated > 0
    assert report.lost == 0, report
    assert report.duplicated == 0, report
    assert not any(report.order_violations.values()), report
    assert report.integrity_failures == 0, report
    if scenario == "budget":
        assert report.evicted > 0 and report.ingested > 0
    else:
        assert report.ingested == report.generated


@pytest.mark.parametrize("scenario", ["broker-kill", "agent-kill", "budget", "outage"])
def test_short_fault_run_loses_nothing(scenario: str) -> None:
    _check(scenario, 1 if scenario == "outage" else 2)


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "cycles", "outage_s"), [
    ("broker-kill", 20, 0.0), ("agent-kill", 20, 0.0), ("budget", 10, 0.0), ("outage", 1, 60.0)])
def test_full_fault_run_loses_nothing(scenario: str, cycles: int, outage_s: float) -> None:
    _check(scenario, cycles, outage_s)
