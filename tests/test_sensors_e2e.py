"""Serial sensors end to end: NMEA and vibration over pseudo-terminals -> the agent (GPS
attached to camera records, vibration windows scored by the shipped sensor model, anomaly
events) -> mosquitto -> ingest."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devtools.mosquitto import LocalBroker
from agent.sources.vibration import VibrationSignal, csv_lines
from tests.conftest import ROOT
from tests.e2e import Ingest, run_agent, write_config
from tests.serial_fakes import PtyDevice
from tests.test_serial_ports import nmea_lines

pytestmark = pytest.mark.broker
SENSOR_MODEL = ROOT / "models" / "lepton-bearing-anomaly"


def vibration(healthy_chunks: int) -> Iterator[bytes]:
    """400 Hz accelerometer lines, 8 samples per chunk; the bearing fails after a while."""
    signal = VibrationSignal(seed=5)
    for i in itertools.count():
        signal.fault = 0.0 if i < healthy_chunks else 0.8
        yield csv_lines(signal.samples(8))


def test_gps_and_vibration_reach_ingest_with_an_anomaly_event(tmp_path: Path,
                                                              broker: LocalBroker) -> None:
    gps = PtyDevice(tmp_path / "ttyGPS", nmea_lines, baud=9600)
    vib = PtyDevice(tmp_path / "ttyVIB", lambda: vibration(150), pace_s=8 / 400)
    config = write_config(tmp_path, broker.url, "dev-sensors")
    with config.open("a") as f:
        f.write(f"""
[[sensors]]
uri = "serial://{gps.path}?baud=9600&protocol=nmea0183&name=gps"
record_interval_s = 1.0

[[sensors]]
uri = "serial://{vib.path}?baud=115200&protocol=csv&name=vib0&columns=ax,ay,az"
model = "{SENSOR_MODEL}"
record_interval_s = 1.0
""")
    text = config.read_text().replace("[model]", '[source]\nattach_sensors = ["gps"]\n\n[model]')
    config.write_text(text)
    ingest = Ingest(broker.url, tmp_path / "ingest.db", "ingest-sensors")
    try:
        summary = run_agent(config, "--source", "synthetic://160x120@10", "--max-frames", "90")
    finally:
        gps.close()
        vib.close()
    stats = ingest.stop()
    assert stats["rejected"] == 0, stats
    with sqlite3.connect(tmp_path / "ingest.db") as db:
        rows = [json.loads(p) for (p,) in db.execute("SELECT payload FROM records")]
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        by_kind.setdefault(r["schema"]["id"], []).append(r)
    frames = by_kind["lepton.result"]
    assert len(frames) == summary["results_committed"] == 90
    with_gps = [f for f in frames if "gps" in f.get("sensors", {})]
    assert len(with_gps) > len(frames) // 2
    assert 48.11 < with_gps[-1]["sensors"]["gps"]["values"]["lat"] < 48.14
    assert abs(with_gps[-1]["sensors"]["gps"]["age_s"]) <= 2.0
    vib_records = [r for r in by_kind["lepton.sensor"] if r["stream"] == "vib0"]
    assert vib_records and all("score" in r for r in vib_records)
    assert any(r["anomaly"] for r in vib_records) and not vib_records[0]["anomaly"]
    assert [r for r in by_kind["lepton.sensor"] if r["stream"] == "gps"]
    events = by_kind["lepton.event"]
    assert [e["type"] for e in events][:1] == ["anomaly_start"]
    assert events[0]["source"] == "vib0" and events[0]["label"] == "bearing_fault"
