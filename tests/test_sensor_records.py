"""How often a sensor without a model sends a ``lepton.sensor`` record (``record_interval_s``),
through a real SensorHub reading a real pty with NMEA traffic."""

from __future__ import annotations

import json
from pathlib import Path

from agent.config.schema import SensorSection
from agent.core.contract.topics import DeviceTopics
from agent.service.sensors import SensorHub
from agent.storage.outbox import PendingRecord
from tests.e2e import wait_for
from tests.serial_fakes import PtyDevice
from tests.test_serial_ports import nmea_lines


def _records_for(tmp_path: Path, interval: float, readings: int) -> tuple[int, list[dict]]:
    """Run a hub on a GPS pty until it has parsed ``readings``; its readings and records."""
    gps = PtyDevice(tmp_path / "ttyGPS", nmea_lines, pace_s=0.005)
    emitted: list[PendingRecord] = []
    section = SensorSection(uri=f"serial://{gps.path}?baud=9600&protocol=nmea0183&name=gps",
                            record_interval_s=interval)
    # No event loop: the reader thread parses; the hub's counters are read once it has stopped.
    hub = SensorHub([section], DeviceTopics("site", "dev"), emit=emitted.extend)
    hub.start()
    try:
        wait_for(lambda: hub.sensors["gps"].readings >= readings, f"{readings} GPS readings",
                 timeout=60)
    finally:
        hub.stop()
        gps.close()
    state = hub.sensors["gps"]
    return state.readings, [json.loads(r.build(i + 1)) for i, r in enumerate(emitted)]


def test_interval_zero_sends_a_record_per_reading(tmp_path: Path) -> None:
    """The config's "0: a record per reading/window" for a sensor without a model."""
    readings, records = _records_for(tmp_path, 0.0, 20)
    assert len(records) == readings >= 20
    assert all(r["schema"]["id"] == "lepton.sensor" and r["stream"] == "gps" for r in records)
    assert [r["counters"]["readings"] for r in records] == list(range(1, readings + 1))


def test_a_long_interval_sends_the_first_reading_only(tmp_path: Path) -> None:
    readings, records = _records_for(tmp_path, 3600.0, 20)
    assert readings >= 20
    assert [r["counters"]["readings"] for r in records] == [1]
