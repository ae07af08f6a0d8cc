"""Serial ports through pyserial on pseudo-terminals: live traffic, garbage, unplug/replug,
ports that never open, and ``diag sensors``."""

from __future__ import annotations

import errno
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from agent.config.schema import AgentConfig
from agent.core.sensors import make_parser, nmea_checksum
from agent.core.uri import STANDARD_BAUDS, parse_sensor_uri
from agent.diag.checks import check_sensors
from agent.sources.serial import SerialReader, open_failure_hint
from agent.sources.vibration import VibrationSignal, csv_lines
from tests.e2e import wait_for
from tests.serial_fakes import PtyDevice


def nmea_lines() -> Iterator[bytes]:
    for i in itertools.count():
        body = (f"GPGGA,{i % 86400:06d},4807.{i % 1000:03d},N,01131.000,E,1,08,0.9,545.4,M,"
                f"46.9,M,,")
        yield f"${body}*{nmea_checksum(body):02X}\r\n".encode()


def test_standard_bauds_match_pyserial() -> None:
    assert serial.Serial.BAUDRATES == STANDARD_BAUDS


def test_uri_parsing_and_errors() -> None:
    u = parse_sensor_uri("serial:///dev/ttyUSB0?baud=4800&protocol=nmea0183&name=gps")
    assert (u.port, u.baud, u.protocol, u.name) == ("/dev/ttyUSB0", 4800, "nmea0183", "gps")
    assert parse_sensor_uri("serial:///dev/ttyACM1").name == "ttyACM1"
    for bad, why in [("tcp://x", "serial:///dev"), ("serial:///dev/x?baud=12345", "standard"),
                     ("serial:///dev/x?protocol=modbus", "unknown protocol"),
                     ("serial:///dev/x?parity=E", "unknown option"),
                     ("serial:///dev/x?name=a/b", "not a valid topic segment")]:
        with pytest.raises(ValueError, match=why):
            parse_sensor_uri(bad)


def test_live_nmea_at_9600_baud_is_parsed(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "ttyGPS", nmea_lines, baud=9600)
    parser = make_parser("nmea0183", "gps", time.time)
    readings = []
    reader = SerialReader(parse_sensor_uri(f"serial://{device.path}?baud=9600"),
                          lambda data: readings.extend(parser.feed(data)))
    reader.start()
    try:
        wait_for(lambda: len(readings) >= 10, f"ten GPS readings ({reader.stats})")
        assert parser.errors <= 1  # at most the sentence cut at the start
        assert readings[-1].values["fix"] == 1 and 48.11 < readings[-1].values["lat"] < 48.14
    finally:
        reader.stop()
        device.close()


def test_unplug_and_replug_reconnects(tmp_path: Path) -> None:
    device = PtyDevice(tmp_path / "ttyVIB", lambda: iter_csv(), baud=115200)
    parser = make_parser("csv", "vib0", time.time, columns=["ax", "ay", "az"])
    readings = []
    reader = SerialReader(parse_sensor_uri(f"serial://{device.path}?baud=115200&protocol=csv"),
                          lambda data: readings.extend(parser.feed(data)))
    reader.backoff.initial = reader.backoff.maximum = 0.1
    reader.start()
    try:
        wait_for(lambda: len(readings) > 50, "50 readings")
        device.unplug()
        wait_for(lambda: reader.stats.disconnects == 1 and not reader.stats.connected,
                 "the unplug noticed")
        assert reader.stats.last_error and "lost" in reader.stats.last_error
        before = len(readings)
        device.plug()
        wait_for(lambda: reader.stats.opens == 2 and len(readings) > before + 50,
                 "the port reopened and 50 more readings")
    finally:
        reader.stop()
        device.close()


def iter_csv() -> Iterator[bytes]:
    signal = VibrationSignal(seed=1)
    while True:
        yield csv_lines(signal.samples(8))


def test_a_port_that_never_opens_names_port_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB9"
    reader = SerialReader(parse_sensor_uri(f"serial://{missing}"), lambda data: None)
    reader.start()
    try:
        wait_for(lambda: reader.stats.last_error is not None, "the open failure reported")
        assert str(missing) in reader.stats.last_error and "does not exist" in reader.stats.last_error
        assert reader.alive  # it keeps trying (the adapter may be plugged in later)
    finally:
        reader.stop()
    denied = OSError(errno.EACCES, "Permission denied")
    assert "dialout" in open_failure_hint("/dev/ttyS0", denied)
    assert "busy" in open_failure_hint("/dev/ttyS0", OSError(errno.EBUSY, "busy"))


def test_diag_sensors_reports_readings_and_a_wrong_baud(tmp_path: Path) -> None:
    gps = PtyDevice(tmp_path / "ttyGPS", nmea_lines, baud=38400)
    noise = PtyDevice(tmp_path / "ttyNOISE", lambda: (bytes([0xF0 | i % 16]) * 64 + b"\n"
                                                      for i in itertools.count()), baud=38400)
    cfg = AgentConfig.model_validate({"sensors": [
        {"uri": f"serial://{gps.path}?baud=38400&name=gps"},
        {"uri": f"serial://{noise.path}?baud=38400&name=noisy"},
        {"uri": f"serial://{tmp_path / 'ttyNONE'}?name=absent"}]})
    try:
        result = check_sensors(cfg, seconds=1.0)
    finally:
        gps.close()
        noise.close()
    probes = {p["name"]: p for p in result.details["sensors"]}
    assert probes["gps"]["readings"] > 5 and probes["gps"]["latest"]["fix"] == 1
    assert probes["noisy"]["bytes"] > 0 and probes["noisy"]["readings"] == 0
    assert "UTF-8" in probes["noisy"]["last_error"]
    assert not probes["absent"]["opened"] and "does not exist" in probes["absent"]["fix"]
    assert result.status == "fail" and "ttyNONE" in result.reason
