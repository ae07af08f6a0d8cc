"""Fault injection with real processes: mosquitto, ingest and the agent, on loopback.

The short version (2 cycles, a 3-second outage) runs in the default tests; the full one
(20 broker kills, 20 agent kills, a 60-second outage) in the slow tier, as CI runs it.
Each run prints its figures. The runner's own checks are tested first, on reports with
known faults, so that a check which could never fail shows up red.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.devtools.faults import FaultReport, format_report, run_fault_scenario
from agent.devtools.mosquitto import find_mosquitto

needs_broker = [pytest.mark.broker,
                pytest.mark.skipif(find_mosquitto() is None, reason="needs mosquitto")]


def _report(generated: int = 100, evicted: int = 0, pending: int = 0, ingested: int = 100,
            stats: dict[str, Any] | None = None) -> FaultReport:
    report = FaultReport("unit", 1)
    report.count(generated=generated, evicted=evicted, pending=pending, ingested=ingested,
                 ingest_stats={"stored": ingested, "duplicates": 0} if stats is None else stats)
    return report


def test_clean_run_passes() -> None:
    report = _report(stats={"stored": 100, "duplicates": 7})
    assert report.ok, report.failures()
    # Duplicates are counted from what ingest received, before its dedupe.
    assert report.duplicated == 7 and report.deliveries == 107
    assert "FAIL" not in format_report(report)


def test_records_still_pending_fail_the_run_and_count_as_lost() -> None:
    report = _report(pending=5, ingested=95, stats={"stored": 95, "duplicates": 0})
    assert not report.ok
    assert report.lost == 5  # pending is not delivered: not subtracted from lost
    assert any("pending" in f for f in report.failures())
    assert "FAIL" in format_report(report)


def test_pending_fails_even_when_the_totals_add_up() -> None:
    # A pending record the budget also counted as evicted: the totals look whole.
    assert not _report(pending=1, evicted=1, ingested=99,
                       stats={"stored": 99, "duplicates": 0}).ok


def test_lost_and_evicted_records() -> None:
    assert not _report(ingested=90, stats={"stored": 90, "duplicates": 0}).ok
    evicted = _report(evicted=10, ingested=90, stats={"stored": 90, "duplicates": 0})
    assert evicted.ok and evicted.lost == 0


def test_a_record_ingest_stored_twice_fails_the_run() -> None:
    # Ingest took 101 deliveries as new for 100 distinct records: its dedupe let one through.
    report = _report(stats={"stored": 101, "duplicates": 3})
    assert not report.ok and report.stored_twice == 1


def test_counts_that_do_not_add_up_fail_the_run() -> None:
    assert not _report(stats={"stored": 90, "duplicates": 0}).ok  # store holds more than counted
    assert not FaultReport("unit", 1).ok  # nothing generated


def test_a_record_evicted_while_its_ack_was_on_its_way_is_reported_not_failed() -> None:
    report = _report(generated=100, evicted=5, ingested=100)
    assert report.ok and report.evicted_in_flight == 5 and report.lost == 0
    assert "(5 also ingested)" in format_report(report)


def test_integrity_and_order_failures_fail_the_run() -> None:
    report = _report()
    report.integrity_checks, report.integrity_failures = 3, 1
    assert not report.ok
    report = _report()
    report.order_violations = {"cam0": 0, "cam1": 2}
    assert not report.ok


def _check(scenario: str, cycles: int, outage_s: float = 3.0) -> None:
    report = run_fault_scenario(scenario, cycles, outage_s=outage_s, seed=cycles)
    print(format_report(report))
    assert report.ok, report.failures()
    assert report.pending == 0 and report.lost == 0 and report.stored_twice == 0, report
    assert report.deliveries >= report.ingested > 0, report
    if scenario == "budget":
        assert report.evicted > 0
        # Every record ingested or evicted; one evicted while its ingest ack was on its way
        # is counted in both.
        assert report.ingested + report.evicted - report.evicted_in_flight == report.generated, \
            report
    else:
        assert report.ingested == report.generated, report


@pytest.mark.parametrize("scenario", ["broker-kill", "agent-kill", "budget", "outage"])
@needs_broker[0]
@needs_broker[1]
def test_short_fault_run_loses_nothing(scenario: str) -> None:
    _check(scenario, 1 if scenario == "outage" else 2)


@pytest.mark.slow
@needs_broker[0]
@needs_broker[1]
@pytest.mark.parametrize(("scenario", "cycles", "outage_s"), [
    ("broker-kill", 20, 0.0), ("agent-kill", 20, 0.0), ("budget", 10, 0.0), ("outage", 1, 60.0)])
def test_full_fault_run_loses_nothing(scenario: str, cycles: int, outage_s: float) -> None:
    _check(scenario, cycles, outage_s)
